"""FedDPO on Flower: a ClientApp that runs local DPO with LoRA on a node's own pairs, and a
ServerApp that runs Flower's own ``FedAvg`` strategy over the adapters (element-wise weighted
mean of every LoRA A and B, weighted by ``num-examples``), as FlowerTune LLM does.

The strategy is Flower's, with one hook overridden (``aggregate_train``) to count the replies
of each round: Flower goes on quietly when every client of a round failed, and a baseline
averaged over fewer clients than it claims would be a wrong result, not a slow one.

Each train message carries the run's settings (``FedDPOSettings``) and the list of stage-1
client ids; a node takes the id at its ``partition-id`` and reads that client's texts itself
(``alignment.feddpo.client_texts``). Only LoRA matrices and three numbers come back.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg

from fedvpa.alignment.feddpo import FedDPOSettings, client_texts, local_dpo
from fedvpa.errors import ConfigError
from fedvpa.federation.messages import arrays_to_record, record_to_arrays, scalars_to_metrics

CLIENT_IDS = "client-ids"
# Everything a FedDPO client may send back besides its LoRA matrices (the message audit).
DECLARED_METRICS = frozenset({"num-examples", "train-loss", "train-seconds"})

app = ClientApp()


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One client's round: the global adapter in, ``local-steps`` DPO steps, the adapter out."""
    config = dict(msg.content["config"])
    settings = FedDPOSettings.from_config(config)
    ids = [int(i) for i in str(config[CLIENT_IDS]).split(",") if i]
    index = int(context.node_config.get("partition-id", 0))
    if not 0 <= index < len(ids):
        raise ConfigError(
            f"node partition {index} has no FedDPO client ({len(ids)} clients)",
            field="partition-id",
        )
    client_id = ids[index]
    pairs = client_texts(settings.stage1_run, client_id)
    with tempfile.TemporaryDirectory(prefix="feddpo-") as work:
        arrays, metrics = local_dpo(
            settings,
            record_to_arrays(msg.content["arrays"]),
            pairs,
            server_round=int(config.get("server-round", 0)),
            client_id=client_id,
            work_dir=Path(work),
        )
    content = RecordDict(
        {
            "arrays": arrays_to_record(arrays),
            "metrics": scalars_to_metrics(metrics),
        }
    )
    return Message(content=content, reply_to=msg)


class CountingFedAvg(FedAvg):
    """Flower's ``FedAvg``, recording how many clients each round's average is over."""

    def __init__(self, expected: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.expected = expected
        self.replies: dict[int, int] = {}
        self.errors: dict[int, list[str]] = {}
        self._sent: set[str] = set()

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        config["server-round"] = server_round
        self._sent = set(arrays.keys())
        return super().configure_train(server_round, arrays, config, grid)

    def audit(self, reply: Message) -> str | None:
        """Why a reply is not what a FedDPO client may send (None when it is): exactly the
        adapter's matrices and the declared metrics, nothing else."""
        content = reply.content
        if set(content.keys()) != {"arrays", "metrics"}:
            return f"unexpected records {sorted(content.keys())}"
        if set(content["arrays"].keys()) != self._sent:
            return "arrays other than the global adapter's"
        if set(content["metrics"].keys()) != DECLARED_METRICS:
            return f"metrics {sorted(content['metrics'].keys())} are not the declared ones"
        return None

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        replies = list(replies)
        good, errors = [], []
        for reply in replies:
            if reply.has_error():
                errors.append(str(reply.error.reason))
            elif (why := self.audit(reply)) is not None:
                errors.append(f"malformed reply refused: {why}")
            else:
                good.append(reply)
        self.replies[server_round] = len(good)
        self.errors[server_round] = errors
        if len(good) < self.expected:
            first = self.errors[server_round][0] if self.errors[server_round] else "no reply"
            raise FedDPOError(
                f"round {server_round}: {len(good)} of {self.expected} FedDPO clients replied "
                f"(first error: {first.strip().splitlines()[-1] if first.strip() else first})"
            )
        return super().aggregate_train(server_round, good)


class FedDPOError(RuntimeError):
    """A FedDPO round lost clients, or the simulation ended without a result."""


@dataclass
class FedDPOOutcome:
    arrays: dict[str, Any] | None = None
    rounds: list[dict[str, float]] = field(default_factory=list)
    replies: dict[int, int] = field(default_factory=dict)
    error: BaseException | None = None


def make_server_app(
    settings: FedDPOSettings,
    client_ids: list[int],
    initial: dict[str, Any],
    outcome: FedDPOOutcome,
) -> ServerApp:
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        try:
            n = len(client_ids)
            strategy = CountingFedAvg(
                expected=n,
                fraction_train=1.0,  # N clients, every one in every round (the paper's N = 10)
                fraction_evaluate=0.0,  # evaluation is the server's, on held-out prompts
                min_train_nodes=n,
                min_available_nodes=n,
            )
            config = ConfigRecord(
                {**settings.to_config(), CLIENT_IDS: ",".join(str(i) for i in client_ids)}
            )
            result = strategy.start(
                grid,
                initial_arrays=arrays_to_record(initial),
                num_rounds=settings.rounds,
                train_config=config,
            )
            outcome.replies = dict(strategy.replies)
            outcome.rounds = [
                {"round": int(r), **{k: float(v) for k, v in m.items()}}
                for r, m in sorted(result.train_metrics_clientapp.items())
            ]
            outcome.arrays = record_to_arrays(result.arrays)
        except BaseException as exc:
            outcome.error = exc
            raise

    return server_app


def run_feddpo(
    settings: FedDPOSettings,
    client_ids: list[int],
    initial: dict[str, Any],
    *,
    flwr_home: Path,
    log: Callable[[str], None] = print,
) -> FedDPOOutcome:
    """``settings.rounds`` rounds of FedDPO in Flower's simulation engine (one SuperNode per
    client, two Ray actors on the 2-core machine); the averaged adapter is ``outcome.arrays``."""
    from fedvpa.federation.runtime import simulate_apps

    outcome = FedDPOOutcome()
    log(
        f"  FedDPO on Flower: {len(client_ids)} clients x {settings.rounds} rounds x "
        f"{settings.local_steps} local DPO steps (batch {settings.batch_size})"
    )
    server_app = make_server_app(settings, client_ids, initial, outcome)
    failed = simulate_apps(server_app, app, len(client_ids), flwr_home=flwr_home)
    if failed is not None and outcome.error is None:
        raise FedDPOError(f"FedDPO simulation failed: {failed}") from failed
    if outcome.error is not None:
        if isinstance(outcome.error, (FedDPOError, ConfigError)):
            raise outcome.error
        raise FedDPOError(f"FedDPO server failed: {outcome.error!r}") from outcome.error
    if outcome.arrays is None or len(outcome.replies) != settings.rounds:
        raise FedDPOError(f"FedDPO ended after {len(outcome.replies)} of {settings.rounds} rounds")
    return outcome
