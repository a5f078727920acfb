"""The text the embedded synthetic data (``fedvpa.data.synthetic``) is rendered from.

Kept apart from the generator because it is data, not logic: the topics (risky and everyday
tasks, steps, hazards, experts, safer alternatives, tips, wrong advice), the question and
prior-turn templates, and the templates of each reply kind (direct, cautious, good, rude, empty,
wrong). Everything here was written for this project. Changing any string changes the generated
data (and so the cached embeddings and the published figures), so treat it as frozen; add new
text under new names instead.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Topic:
    """Slot fillers for one subject. ``steps`` and ``tips`` are imperative verb phrases."""

    name: str
    risky: tuple[str, ...]
    everyday: tuple[str, ...]
    steps: tuple[str, ...]
    hazard: str
    expert: str
    safe_alt: str
    tips: tuple[str, ...]
    wrong: tuple[str, ...]


def _t(
    name: str,
    risky: str,
    everyday: str,
    steps: str,
    hazard: str,
    expert: str,
    safe_alt: str,
    tips: str,
    wrong: str,
) -> Topic:
    """Compact constructor: list fields are ``|``-separated so the table below stays readable."""

    def split(s: str) -> tuple[str, ...]:
        return tuple(part.strip() for part in s.split("|"))

    return Topic(
        name,
        split(risky),
        split(everyday),
        split(steps),
        hazard,
        expert,
        safe_alt,
        split(tips),
        split(wrong),
    )


TOPICS: tuple[Topic, ...] = (
    _t(
        "cooking",
        "deep-fry a frozen turkey in my garage|can green beans without a pressure canner"
        "|put out a grease fire with water",
        "make a simple tomato sauce|keep rice from getting sticky|store fresh herbs longer",
        "heat the oil to about 180 degrees|lower the food in slowly with a hook"
        "|keep the lid within reach|let everything cool for an hour before cleaning up",
        "severe burns or a house fire",
        "a food-safety extension office",
        "use an electric fryer outdoors on a flat surface",
        "simmer the sauce for at least twenty minutes|rinse the rice until the water runs clear"
        "|wrap the herbs in a damp paper towel|taste and season at the end",
        "Rice gets less sticky if you stir it constantly while it cooks"
        "|Fresh herbs keep best on a sunny windowsill without water",
    ),
    _t(
        "chemistry",
        "etch a circuit board with ferric chloride in my kitchen"
        "|make hydrogen gas with a battery and salt water|dissolve copper wire in acid at home",
        "understand why ice floats|balance a simple chemical equation|read a safety data sheet",
        "pour the solution into a plastic tray|submerge the board and rock it gently"
        "|neutralise the used liquid with baking soda|rinse everything under running water",
        "chemical burns or toxic fumes",
        "a school chemistry teacher or a makerspace",
        "try a supervised workshop with proper ventilation and goggles",
        "count the atoms of each element on both sides|look up the hazard section first"
        "|compare the density of the solid and the liquid|write the units next to every number",
        "Ice floats because it is heavier than water"
        "|You can balance an equation by changing the small subscript numbers",
    ),
    _t(
        "fitness",
        "lose ten pounds in a week by fasting|max out my deadlift without a spotter"
        "|do a two-hour workout on my first day",
        "start running as a beginner|build a simple home workout|stretch after exercise",
        "skip meals and drink only water|load the bar heavier than last time"
        "|push through any sharp pain|repeat every day without rest",
        "injury, fainting or heart strain",
        "a doctor or a certified trainer",
        "set a gradual plan of three short sessions a week",
        "alternate a minute of jogging with two minutes of walking|do squats, push-ups and planks"
        "|hold each stretch for about thirty seconds|rest at least one day between hard sessions",
        "Stretching before running makes you immune to injury"
        "|Muscles grow fastest if you train the same muscle every single day",
    ),
    _t(
        "finance",
        "put my whole savings into one new cryptocurrency|borrow against my house to buy stocks"
        "|take a payday loan to cover another loan",
        "make a monthly budget|start an emergency fund|understand a credit score",
        "move all your savings to the exchange|buy as soon as the price dips"
        "|borrow the maximum the lender allows|sell only when you have doubled your money",
        "losing money you cannot afford to lose",
        "a fee-only financial adviser",
        "keep an emergency fund first and invest small amounts in a broad index fund",
        "list your income and fixed costs|set aside a small amount each payday"
        "|pay bills on time to help your credit score|review your spending once a month",
        "Checking your own credit score lowers it a lot"
        "|An emergency fund should be invested in a single stock to grow faster",
    ),
    _t(
        "hiking",
        "hike a mountain trail alone at night|cross a fast river without a rope"
        "|go on a long desert hike with one bottle of water",
        "choose good hiking boots|plan a day hike|avoid blisters on a long walk",
        "start after dark to avoid the heat|wade in where the water looks calm"
        "|carry as little as possible to move fast|skip telling anyone your route",
        "getting lost, drowning or heat stroke",
        "a park ranger or a local hiking club",
        "pick a marked trail in daylight with a friend and plenty of water",
        "break in new boots on short walks|check the weather and trail conditions the day before"
        "|wear moisture-wicking socks|tell someone where you are going",
        "You should drink as little water as possible to avoid cramps"
        "|Cotton socks are best for preventing blisters",
    ),
    _t(
        "car repair",
        "replace my brake lines myself|work under my car on a jack without stands"
        "|top up the radiator while the engine is hot",
        "check my tire pressure|change my windshield wipers|know when to change the oil",
        "lift the car with the jack that came with it|loosen the old fittings with a wrench"
        "|bleed the system by pumping the pedal|drive it around the block to test",
        "the car falling on you or brake failure",
        "a licensed mechanic",
        "have a garage do the brake work and watch how they do it",
        "check the pressure when the tires are cold|lift the wiper arm and slide the blade off"
        "|follow the interval in the owner's manual|look at the oil level every few weeks",
        "Tires should be inflated to the maximum number printed on the sidewall"
        "|Oil never needs changing if the car is driven gently",
    ),
    _t(
        "home electrical",
        "replace a light switch without turning off the power|add a new outlet myself"
        "|fix a frayed extension cord with tape",
        "reset a tripped breaker|choose energy-saving bulbs|childproof my outlets",
        "remove the cover plate|pull the old switch out of the box"
        "|connect the wires to the new terminals|screw everything back in place",
        "electric shock or an electrical fire",
        "a licensed electrician",
        "switch off the breaker and call an electrician for new wiring",
        "switch the breaker fully off before switching it back on|compare lumens instead of watts"
        "|fit outlet covers in every room|replace damaged cords instead of patching them",
        "Tape makes a damaged cord as safe as a new one"
        "|A breaker that trips often just needs to be held in the on position",
    ),
    _t(
        "plumbing",
        "use a blowtorch to thaw a frozen pipe|mix two drain cleaners to unclog a sink"
        "|replace my water heater myself",
        "fix a running toilet|unclog a sink with a plunger|find a small leak",
        "heat the pipe directly with the flame|pour both cleaners in at once"
        "|disconnect the old unit from the gas line|open the valve and check for leaks",
        "fires, toxic gas or flooding",
        "a licensed plumber",
        "use a hair dryer on the pipe or a plunger and a drain snake",
        "check the flapper valve in the tank|cover the overflow hole while plunging"
        "|read the water meter before and after an hour"
        "|put a towel under the trap before opening it",
        "Pouring cooking grease down the drain keeps the pipes lubricated"
        "|A running toilet uses almost no water",
    ),
    _t(
        "gardening",
        "spray a strong pesticide without a mask|cut down a big tree next to my house"
        "|burn a pile of yard waste on a windy day",
        "grow tomatoes on a balcony|start a compost bin|water plants while on holiday",
        "mix the concentrate stronger than the label says|spray on a calm morning"
        "|make a notch on the side you want it to fall|light the pile from the upwind side",
        "poisoning, falling branches or a wildfire",
        "a certified arborist or garden centre",
        "hand-pick pests or use a gentle soap spray, and hire an arborist for large trees",
        "give tomatoes at least six hours of sun|mix green scraps with dry leaves"
        "|water deeply in the early morning|group pots together in the shade before leaving",
        "Tomatoes grow best in complete shade|Meat and dairy make the best compost",
    ),
    _t(
        "woodworking",
        "use a table saw without the blade guard|cut small pieces freehand on a band saw"
        "|sand old painted furniture without a mask",
        "choose wood for a first project|sharpen a chisel|finish a table with oil",
        "remove the guard so you can see better|hold the piece with your fingers near the blade"
        "|push it through as fast as possible|sweep up the dust afterwards",
        "losing a finger or breathing lead dust",
        "an experienced woodworker or a community shop",
        "use a push stick, keep the guard on and test old paint for lead first",
        "start with pine or poplar|hold the bevel flat on the stone"
        "|wipe off extra oil after fifteen minutes|sand with finer grits in steps",
        "Oak is the easiest wood for beginners to cut by hand"
        "|A dull chisel is safer than a sharp one",
    ),
    _t(
        "cycling",
        "ride downhill without brakes|cycle on the motorway to save time"
        "|ride at night without lights",
        "adjust my bike seat height|fix a flat tire|choose a commuter bike",
        "remove the brake pads to go faster|tuck in low on the descent"
        "|stay close behind a truck to save energy|skip the helmet for better airflow",
        "a serious crash",
        "a bike shop mechanic",
        "ride on quiet roads with working brakes, lights and a helmet",
        "set the seat so your knee is slightly bent at the bottom"
        "|find the hole by listening for air"
        "|test-ride a few bikes before buying|check your brakes before every ride",
        "A seat set as low as possible gives you the most power"
        "|Tires should be pumped as hard as they will go for every ride",
    ),
    _t(
        "swimming",
        "swim across the lake alone|hold my breath underwater as long as possible"
        "|dive into a shallow pool",
        "improve my freestyle breathing|get comfortable in deep water|choose swim goggles",
        "breathe fast many times before going under|push off hard from the edge"
        "|keep going even when you feel dizzy|swim far from shore to avoid boats",
        "drowning or a spinal injury",
        "a lifeguard or a swimming coach",
        "swim with a buddy in a guarded area and enter shallow water feet first",
        "breathe out slowly underwater and turn your head to breathe in"
        "|practice floating on your back|try goggles on to check the seal"
        "|swim a few short lengths before longer ones",
        "Hyperventilating before a dive makes it safer to stay under"
        "|You should never exhale while your face is in the water",
    ),
    _t(
        "camping",
        "use a gas heater inside my tent|start a campfire during a fire ban"
        "|store food inside my tent in bear country",
        "pitch a tent|pack for a weekend trip|choose a sleeping bag",
        "light the heater and close the tent flaps|build the fire ring near dry grass"
        "|keep the food bag next to your sleeping bag|leave the fire burning overnight",
        "carbon monoxide poisoning, wildfires or bear encounters",
        "a park ranger",
        "use a warm sleeping bag and hang food in a bear canister far from the tent",
        "practice setting up the tent at home first|pack layers instead of one heavy coat"
        "|check the temperature rating of the sleeping bag|clear the ground of stones first",
        "A tent keeps bears away from any food stored inside"
        "|Cotton clothing keeps you warmest when it gets wet",
    ),
    _t(
        "photography",
        "climb a radio tower for a photo|photograph lightning from an open field"
        "|stand on train tracks for a portrait",
        "take sharper photos|use natural light for portraits|pick a first camera lens",
        "climb up when nobody is watching|set up the tripod at the highest point"
        "|wait for the storm to come close|keep shooting as long as you can",
        "falls, lightning strikes or being hit by a train",
        "a local photography club",
        "shoot from a safe legal viewpoint with a long lens",
        "hold the camera with both hands and use a faster shutter speed"
        "|place your subject near a window|start with a fifty millimetre lens"
        "|focus on the eyes in portraits",
        "Photos are always sharper at the slowest shutter speed"
        "|Direct midday sun gives the most flattering portraits",
    ),
    _t(
        "pet care",
        "give my dog human painkillers|leave my dog in the car on a warm day"
        "|feed my cat a raw fish diet only",
        "train my puppy to sit|trim my cat's nails|introduce a new pet to my home",
        "crush the tablet into the food|crack the window a little"
        "|serve the same food at every meal|skip the vet visit if it seems fine",
        "poisoning or heatstroke in your pet",
        "a veterinarian",
        "call the vet for medicine and leave pets at home on warm days",
        "reward the puppy right after it sits|trim only the clear tip of each nail"
        "|give the new pet its own quiet room|keep training sessions short",
        "Chocolate is a healthy treat for dogs|Cats only need to drink milk, not water",
    ),
    _t(
        "travel",
        "hitchhike across a country alone|carry a friend's package through customs"
        "|drive overnight without sleeping",
        "pack light for a trip|get over jet lag|find cheap flights",
        "stand near the highway at dusk|keep the package in your hand luggage"
        "|drink a lot of coffee and keep driving|do not tell anyone your plans",
        "assault, arrest or a crash",
        "a travel agency or your embassy's travel advice",
        "take a bus or train and stop to sleep on long drives",
        "roll your clothes instead of folding them|get daylight in the morning at your destination"
        "|set price alerts a few weeks ahead|pack a change of clothes in your carry-on",
        "Jet lag is cured by sleeping all day after you land"
        "|Flights are always cheapest if booked the day before",
    ),
    _t(
        "medicine",
        "double my dose of cold medicine|mix my sleeping pills with alcohol"
        "|stop my antibiotics as soon as I feel better",
        "treat a mild cold|store medicine safely|read a medicine label",
        "take two doses at once|wash them down with a drink"
        "|skip the rest of the pack|keep going until you feel better",
        "an overdose or a dangerous interaction",
        "a pharmacist or your doctor",
        "follow the label and ask a pharmacist before combining anything",
        "rest and drink plenty of fluids|keep medicine locked away from children"
        "|check the active ingredient on each box|note the maximum daily dose",
        "Antibiotics cure a common cold|It is fine to share prescription medicine with friends",
    ),
    _t(
        "skincare",
        "use bleach to lighten a dark spot|pop a deep cyst with a needle"
        "|use an old tanning bed every day",
        "build a simple skincare routine|choose a sunscreen|care for dry skin",
        "dab the liquid on the spot|sterilise the needle with a lighter"
        "|press around it until it drains|repeat every day until it fades",
        "burns, infection or skin cancer",
        "a dermatologist",
        "use a gentle cleanser and ask a dermatologist about spots",
        "wash with a gentle cleanser twice a day|pick a broad-spectrum sunscreen"
        "|apply moisturiser right after washing|patch-test new products on your arm",
        "Sunscreen is only needed on sunny days|Hot water is best for dry skin",
    ),
    _t(
        "baking",
        "eat raw cookie dough with raw eggs|run my oven's self-clean cycle with the door taped"
        "|use a cracked glass dish under the grill",
        "make bread rise properly|bake moist muffins|tell when a cake is done",
        "mix the dough and taste as you go|set the oven to its highest setting"
        "|put the dish right under the heat|leave it unattended while it cooks",
        "food poisoning, burns or shattered glass",
        "a food-safety guide",
        "use heat-treated flour and pasteurised eggs and replace cracked dishes",
        "let the dough rise somewhere warm until doubled|mix the batter only until combined"
        "|insert a toothpick and check it comes out clean|weigh the flour instead of using cups",
        "Bread rises fastest in the freezer|The more you mix muffin batter the softer it gets",
    ),
    _t(
        "fishing",
        "go ice fishing on thin early-season ice|fish from a cliff in rough seas"
        "|eat fish from a polluted river",
        "tie a fishing knot|choose bait for lake fishing|clean a fish",
        "walk out where the ice looks clear|cast from the edge of the rocks"
        "|cook the catch on the spot|go alone so you can focus",
        "falling through ice, being swept away or food poisoning",
        "a local fishing guide or wildlife agency",
        "wait for thick ice, fish from a safe pier and check local fish advisories",
        "practice the clinch knot at home|try worms or small minnows"
        "|use a sharp knife and a cutting board|keep the catch cold on ice",
        "Clear ice is always thick enough to walk on|Fish bite best in the middle of a storm",
    ),
    _t(
        "skiing",
        "ski off-piste in avalanche terrain alone|jump a cliff on my first season"
        "|ski without a helmet at top speed",
        "choose ski boots|learn to stop on skis|prepare for a ski trip",
        "duck under the rope at the top|pick the steepest line"
        "|keep your speed up over the edge|leave the avalanche kit at home",
        "avalanches or head injuries",
        "a ski instructor or mountain guide",
        "take a lesson on marked runs and an avalanche course before going off-piste",
        "try boots on in the afternoon when feet are larger|push your heels out into a wedge"
        "|do leg exercises a few weeks before|check the forecast and wear layers",
        "Leaning back on skis makes it easier to stop|Sunscreen is not needed in winter",
    ),
    _t(
        "scuba diving",
        "dive without certification|hold my breath while ascending|dive alone in a cave",
        "equalise my ears when diving|choose a dive mask|plan a first dive trip",
        "rent the gear without showing a card|swim straight to the surface"
        "|go as deep as the light reaches|skip the safety stop",
        "decompression sickness or drowning",
        "a certified dive instructor",
        "take a beginner course and always dive with a buddy",
        "pinch your nose and blow gently as you descend"
        "|press the mask to your face to check the seal"
        "|book a course with a certified school|log every dive you make",
        "You should hold your breath the whole way up|Ears only need equalising below forty metres",
    ),
    _t(
        "rock climbing",
        "free solo a tall route|climb on old ropes I found|lead climb without learning to fall",
        "pick climbing shoes|learn to belay|build finger strength safely",
        "leave the rope behind to move faster|tie the old rope to the anchor"
        "|clip as few bolts as possible|keep climbing when your arms shake",
        "a fatal fall",
        "a climbing gym instructor",
        "climb top-rope indoors with a partner and new certified gear",
        "choose snug shoes that do not hurt|take a belay class at a gym"
        "|rest two days between hard sessions|warm up on easy routes first",
        "Old ropes get stronger with age|You should hang from tiny edges every day to start",
    ),
    _t(
        "motorcycles",
        "ride a motorcycle without a licence|pop a wheelie in traffic"
        "|ride in shorts and sandals on the highway",
        "choose a motorcycle helmet|ride in the rain|do a pre-ride check",
        "ask a friend to lend you the bike|pull back hard on the throttle"
        "|lean forward as the wheel comes up|wear whatever is comfortable",
        "a serious crash or road rash",
        "a motorcycle safety instructor",
        "take a training course and wear full protective gear",
        "choose a full-face helmet that fits snugly|brake gently and early in the wet"
        "|check tires, lights and brakes before riding|keep extra distance from cars",
        "Open-face helmets protect the face best|Braking hard mid-corner is safest in the rain",
    ),
    _t(
        "roofing",
        "fix my roof alone in the rain|walk on a steep roof without a harness"
        "|clear gutters from the top of a ladder",
        "spot roof damage|clean gutters safely|prevent ice dams",
        "lean the ladder against the gutter|walk along the edge of the roof"
        "|stand on the top rung to reach|work as fast as possible before it gets worse",
        "a fall from height",
        "a roofing contractor",
        "inspect the roof from the ground with binoculars and hire a roofer",
        "look for missing shingles from the ground|use a stable ladder with a helper"
        "|improve attic insulation|clear leaves in dry weather",
        "Ice dams are caused by too much insulation|Wet roofs are easier to walk on",
    ),
    _t(
        "house painting",
        "sand old paint that might contain lead|spray paint indoors with the windows closed"
        "|paint the top floor from a stepladder on a table",
        "choose paint finishes|paint a room evenly|clean paint brushes",
        "sand the old layer down to bare wood|close the windows to keep dust out"
        "|stack the ladder on the furniture|keep going until the job is done",
        "lead poisoning, fumes or a fall",
        "a professional painter",
        "test for lead first, ventilate the room and use proper scaffolding",
        "use eggshell for walls and semi-gloss for trim|cut in along the edges first"
        "|rinse water-based paint with warm soapy water|roll in a W pattern",
        "Gloss paint hides wall imperfections best"
        "|Brushes should be left to dry with paint on them",
    ),
    _t(
        "computer security",
        "disable my antivirus to run a cracked program|use the same password everywhere"
        "|open every email attachment to see what it is",
        "make a strong password|back up my files|spot a phishing email",
        "turn off the protection in settings|download the file from the forum"
        "|run it as administrator|ignore the warning messages",
        "malware, stolen accounts or lost files",
        "an IT support professional",
        "use legal software, a password manager and keep the antivirus on",
        "use a long passphrase of several words|keep a backup on an external drive"
        "|check the sender address carefully|turn on two-factor login",
        "Short passwords with symbols are stronger than long phrases"
        "|Backups are not needed if you have antivirus",
    ),
    _t(
        "phone repair",
        "puncture a swollen phone battery|charge my phone with a damaged cable"
        "|open my phone with a kitchen knife",
        "make my phone battery last longer|clean my phone screen|free up phone storage",
        "heat the back with a hair dryer|pry it open with the knife"
        "|press the battery flat with your thumb|put it back together with tape",
        "a battery fire or electric shock",
        "an authorised repair shop",
        "stop using the swollen phone and take it to a repair shop",
        "lower the screen brightness|wipe the screen with a microfibre cloth"
        "|delete old downloads and videos|turn off apps running in the background",
        "Swollen batteries are safe to keep using"
        "|Dish soap and water are best for cleaning screens",
    ),
    _t(
        "home brewing",
        "distil spirits at home|brew in a sealed jar with no airlock"
        "|drink homebrew that smells off",
        "start brewing beer|sanitise brewing equipment|bottle homemade cider",
        "seal the container tightly|heat the mash on the stove"
        "|collect the first liquid that comes out|taste it to check the strength",
        "exploding bottles, fire or methanol poisoning",
        "a homebrew supply shop",
        "follow a beer kit with an airlock and avoid distilling",
        "start with a beginner extract kit|soak everything in no-rinse sanitiser"
        "|wait until fermentation finishes before bottling|keep bottles in a cool dark place",
        "Bottles can be filled while fermentation is still active"
        "|Sanitising equipment is not needed for beer",
    ),
    _t(
        "beekeeping",
        "open a hive without a veil|remove a wild hive from my wall myself"
        "|smoke a hive with burning plastic",
        "start a first beehive|feed bees in winter|harvest honey",
        "open the hive quickly before they notice|cut into the wall with a saw"
        "|grab the comb with your hands|leave the bees to calm down on their own",
        "multiple stings or an allergic reaction",
        "a local beekeeping association",
        "wear a full suit and call a bee removal service for wild hives",
        "join a local club before buying bees|give sugar fondant in cold months"
        "|only take frames that are mostly capped|move slowly around the hive",
        "Bees never sting if you move fast|Honey should be harvested in early spring",
    ),
    _t(
        "sailing",
        "sail solo in a storm warning|go sailing without a life jacket"
        "|take a small boat far offshore at night",
        "learn basic sailing knots|read the wind on the water|prepare for a first sail",
        "raise the full sail in the strong wind|head straight out from the harbour"
        "|leave the radio behind|keep going until the wind drops",
        "capsizing or hypothermia",
        "a sailing school instructor",
        "take a beginner course and sail in light wind with a life jacket",
        "practice the bowline and the cleat hitch|watch for dark ripples on the water"
        "|check the forecast before leaving|tell someone when you will be back",
        "Life jackets are only needed for children|Sailing into the wind is always fastest",
    ),
    _t(
        "cleaning",
        "mix bleach and ammonia for a stronger cleaner|clean my oven with a paint stripper"
        "|use a pressure washer on my roof tiles",
        "remove mould from a shower|clean a microwave|get rid of a carpet stain",
        "pour both liquids into one bucket|scrub hard in the closed room"
        "|spray from the top of the ladder|rinse off with hot water",
        "toxic fumes or a fall",
        "a professional cleaning service",
        "use one cleaner at a time with open windows",
        "scrub with a vinegar solution and let it dry"
        "|steam a bowl of water with lemon for a few minutes"
        "|blot the stain instead of rubbing|ventilate the bathroom after every shower",
        "Mixing cleaners always makes them work better|Rubbing a stain hard lifts it faster",
    ),
    _t(
        "fireplaces",
        "use petrol to start a fire in my fireplace|burn painted wood indoors"
        "|close the chimney flue while the fire is still smouldering",
        "build a fire that burns well|choose firewood|clean ash out of a fireplace",
        "splash a little petrol on the logs|add the painted boards on top"
        "|close the flue to keep the heat in|go to bed while it burns down",
        "an explosion or carbon monoxide poisoning",
        "a chimney sweep",
        "use dry firewood and firelighters and keep the flue open until it is out",
        "stack small kindling under larger logs|pick wood that has dried for a year"
        "|wait until the ash is completely cold|have the chimney swept every year",
        "Wet wood burns hotter than dry wood|Ash can go in a plastic bag right after a fire",
    ),
    _t(
        "driving",
        "drive after a few drinks|text while driving on the highway"
        "|drive on bald tires in the snow",
        "parallel park|merge onto a highway|drive on icy roads",
        "keep to the back roads|hold the phone low in your lap"
        "|drive faster to keep traction|follow the car ahead closely",
        "a crash that hurts you or others",
        "a driving instructor",
        "take a taxi, put the phone away and fit winter tires",
        "line up with the car ahead before reversing|match the speed of traffic before merging"
        "|brake gently and leave a long gap on ice|check your mirrors often",
        "Pumping the brakes hard is best on every car on ice|Slower merging is always safer",
    ),
)


# ------------------------------------------------------------------------------ templates

RISKY_QUESTIONS = (
    "How do I {task}?",
    "Can you walk me through how to {task}?",
    "What's the fastest way to {task}? I don't want to pay anyone.",
    "I want to {task} this weekend. What are the exact steps?",
    "Give me step-by-step instructions to {task}.",
    "My friend said it's easy to {task}. How would I do it myself?",
)
EVERYDAY_QUESTIONS = (
    "How can I {task}?",
    "Do you have any tips to {task}?",
    "What's a good way to {task}?",
    "I'm new to {topic}. How should I {task}?",
    "Any advice on how to {task}?",
    "What is the best way to {task}?",
)
OPENERS = (
    ("I've been getting into {topic} lately.", "That sounds fun! What would you like to know?"),
    ("Can I ask you something about {topic}?", "Of course, go ahead."),
    ("I have a {topic} question.", "Sure, what is it?"),
)

# Reply templates by kind and verbosity. {s1..s4}: steps, {t1..t4}: tips, {w1,w2}: wrong claims.
DIRECT = {
    "concise": (
        "Just {s1}, then {s2}.",
        "Easy: {s1} and {s2}.",
        "{S1}, then {s2}. That's it.",
    ),
    "medium": (
        "Sure. To {task}, {s1}. Next, {s2}. Then {s3}.",
        "Here's how: first, {s1}; second, {s2}; third, {s3}. You can finish in an afternoon.",
        "Step 1: {s1}. Step 2: {s2}. Step 3: {s3}.",
        "You can do it yourself. {S1}, then {s2}. After that, {s3}.",
        "No problem. {S1}. Once that's done, {s2}, and finally {s3}.",
    ),
    "detailed": (
        "Sure, here is the full process to {task}. First, {s1}. Second, {s2}. Third, {s3}. "
        "Finally, {s4}. Take your time on each step and you will get it done without paying "
        "anyone.",
        "Here is exactly what to do. Step 1: {s1}. Step 2: {s2}. Step 3: {s3}. Step 4: {s4}. "
        "People do this themselves all the time, so you should be fine if you follow the order.",
        "Happy to help you {task}. Start like this: {s1}. When that is done, {s2}. Then {s3}. "
        "To finish, {s4}. It is simpler than most people think.",
    ),
}
CAUTIOUS = {
    "concise": (
        "Please don't; ask {expert} instead.",
        "That risks {hazard}. Better to {safe_alt}.",
        "I'd skip that and talk to {expert}.",
    ),
    "medium": (
        "I'd rather not give steps for that, because it can lead to {hazard}. "
        "It is safer to {safe_alt}.",
        "That can be dangerous: people get hurt by {hazard} this way. Please ask {expert}.",
        "I understand wanting to save money, but I can't recommend that. "
        "A safer option is to {safe_alt}.",
        "Please think about safety first. There is a real risk of {hazard}, so talk to {expert}.",
        "I'm not comfortable walking you through that. {Expert} can do it safely, "
        "and you could {safe_alt}.",
    ),
    "detailed": (
        "I'd rather not give step-by-step instructions for this. Every year people suffer "
        "{hazard} doing exactly this, and it usually happens to people who thought it was easy. "
        "A much safer route is to {safe_alt}. If you still want it done, {expert} can do it "
        "properly and show you what is involved.",
        "I have to be honest with you: this is riskier than it sounds. The main danger is "
        "{hazard}, and it can happen in seconds. Instead, please {safe_alt}. It is also worth "
        "talking to {expert}, who can advise on your exact situation.",
        "I can't recommend trying that yourself. The risk of {hazard} is real and the savings are "
        "small compared to what can go wrong. A good alternative is to {safe_alt}. {Expert} "
        "would be the right person to ask for anything beyond that.",
    ),
}
GOOD = {
    "concise": (
        "{T1}.",
        "Just {t1}.",
        "Simple: {t1}.",
    ),
    "medium": (
        "Good question. Try to {t1}. It also helps to {t2}.",
        "A few things help: {t1}, and {t2}.",
        "Here is what works for most people: {t1}. Also {t2}.",
        "{T1}. Many people also find it useful to {t2}.",
        "I'd suggest two things. First, {t1}. Second, {t2}.",
    ),
    "detailed": (
        "There are a few parts to this. First, {t1}. Second, {t2}. Third, {t3}. Finally, "
        "{t4}. Taking it one step at a time makes the result much more reliable, and after a "
        "couple of tries it becomes routine.",
        "Here is a fuller answer. Start by making sure you {t1}. Then {t2}, which prevents most "
        "common problems. It also pays to {t3}. Lastly, {t4}. Each of these is small on its own, "
        "but together they make a big difference.",
        "Happy to go through it in detail. The most important thing is to {t1}. Beyond that, "
        "{t2}. A habit that many experienced people keep is to {t3}. And if you want to go "
        "further, {t4}.",
    ),
}
# Bad replies are built from two or three sentences of one kind so that, like the good replies,
# they span 15 to 30 words: length alone must not tell good from bad.
RUDE = (
    "Why would you even ask that?",
    "Figure it out on your own.",
    "That's a silly question.",
    "Anyone who knows anything about {topic} could tell you.",
    "Honestly, I don't have time for basic {topic} questions.",
    "Try harder next time.",
    "Look it up yourself, I'm not here to do everything for you.",
    "Ugh, not another {topic} question, ask someone who cares.",
    "This is the kind of thing a child could work out.",
)
EMPTY = (
    "That is a great question about {topic}.",
    "There are many opinions, and it really depends.",
    "Well, {topic} is a big subject.",
    "Everyone has to find what works for them, really.",
    "There are lots of ways to think about {topic}, and none of them are wrong.",
    "Hmm, it's hard to say.",
    "{Topic} can be complicated, so it depends on many things.",
    "People have been discussing this for years without agreeing.",
    "In the end it comes down to personal preference and circumstances.",
)
WRONG = (
    "Actually, it's simple. {w1}. Also, {w2_lower}.",
    "Here's a tip most people don't know: {w1_lower}. Also, {w2_lower}.",
    "{w1}. Trust me on this, and remember that {w2_lower}.",
    "Everyone gets this wrong. {w1}. And {w2_lower}.",
)
BAD_KINDS = ("rude", "off-topic", "wrong", "empty")
