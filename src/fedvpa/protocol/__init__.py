"""The federated round protocol, free of any runtime: the rounds (``round.py``), what a client
does with a message (``client.py``), seeds (``seeds.py``), the run folder (``run_folder.py``) and
the in-process runtime the tests and benchmarks use (``in_process.py``)."""
