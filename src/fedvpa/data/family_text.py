"""The text the pluralistic family (``fedvpa.data.family``) renders replies and prompts from.

Kept apart from the generator because it is data, not logic: 24 everyday domains (their tasks,
advice with reasons, worked examples, wrong advice), the names and principles that fill the
``examples`` slot, the filler of flawed replies, the prompt and prior-turn templates, and the
pole-specific sentence templates of each style axis. Everything here was written for this project.
Changing any string changes every generated family data set (and so the cached embeddings and
the published figures), so treat it as frozen; add new text under new names instead.
"""

from __future__ import annotations

from dataclasses import dataclass

# ------------------------------------------------------------------------------------ domains


@dataclass(frozen=True, slots=True)
class Domain:
    """Slot fillers for one everyday subject.

    ``advice`` and ``wrong`` are ``(action, reason)`` pairs: an imperative verb phrase and a
    clause saying why (``wrong`` gives bad advice with a bogus reason). ``examples`` are worked
    cases with numbers and a ``{name}`` slot. ``noun`` reads inside a sentence ("in {noun}").
    """

    noun: str
    expert: str
    risk: str
    tasks: tuple[str, ...]
    advice: tuple[tuple[str, str], ...]
    examples: tuple[str, ...]
    wrong: tuple[tuple[str, str], ...]


def _d(
    noun: str,
    expert: str,
    risk: str,
    tasks: tuple[str, ...],
    advice: tuple[str, ...],
    examples: tuple[str, ...],
    wrong: tuple[str, ...],
) -> Domain:
    """Compact constructor: each advice or wrong item is ``"action|reason"``."""

    def pairs(items: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
        out = []
        for item in items:
            action, reason = item.split("|")
            out.append((action.strip(), reason.strip()))
        return tuple(out)

    return Domain(noun, expert, risk, tasks, pairs(advice), examples, pairs(wrong))


DOMAINS: tuple[Domain, ...] = (
    _d(
        "travel planning",
        "the airline or a travel agent",
        "non-refundable bookings going to waste",
        (
            "plan a week-long trip without overspending",
            "organise a trip abroad for the first time",
            "put together an itinerary for a city break",
            "plan a holiday on a tight budget",
        ),
        (
            "fix a total budget before booking anything|so every later choice has a clear limit",
            "book transport before accommodation|because fares tend to climb faster than rooms",
            "keep one free afternoon in every three days|since delays and tiredness eat into plans",
            "save paper and digital copies of every booking|so a dead phone cannot strand the trip",
            "stay somewhere close to public transport|which cuts both travel time and taxi costs",
            "compare two or three booking sites before paying|as the same room is often priced "
            "differently",
            "pick the three sights that matter most|so the rest of the schedule can flex around "
            "them",
            "check entry rules and passport expiry early|since some countries want months of "
            "validity left",
        ),
        (
            "{name} set a 600 euro limit for five days in Porto, spent 210 on flights and 250 on "
            "a guesthouse, and kept 140 for food and trams",
            "{name} booked a 45 euro train to Ghent two months early, while the same seat cost "
            "95 euros in the final week",
            "{name} built 4 days in Vienna around just 3 museums and still had 2 slow evenings "
            "free",
            "{name} found the same hotel for 88 euros a night on one site and 112 on another, "
            "saving 72 euros over three nights",
        ),
        (
            "fill every hour of every day with activities|because unplanned time is wasted money",
            "leave passport checks until the day of departure|since airlines rarely look at "
            "expiry dates",
            "pay for the first hotel that shows up in a search|because prices are identical "
            "everywhere",
        ),
    ),
    _d(
        "personal budgeting",
        "a fee-only financial adviser",
        "debt growing faster than expected",
        (
            "get my monthly spending under control",
            "start saving when money is tight",
            "pay off a credit card faster",
            "work out a household budget I can actually stick to",
        ),
        (
            "transfer a fixed sum to a separate account the day wages arrive|so saving happens "
            "before spending",
            "record every purchase for one full month|because guesses about spending run low",
            "clear the card with the highest interest rate first|since it costs the most each "
            "month",
            "keep a small cushion in the current account|so one surprise bill does not trigger "
            "overdraft fees",
            "cancel subscriptions that went unused last month|which frees money without changing "
            "daily life",
            "give groceries a weekly rather than a monthly limit|because a weekly target is "
            "easier to watch",
            "schedule bill payments for their due dates|so late fees never appear",
            "review the numbers on the same date every month|which turns the budget into a habit",
        ),
        (
            "{name} earns 2,400 a month, moves 200 aside on payday and has 1,200 of emergency "
            "money after six months",
            "{name} owed 3,000 on a card at 22 percent, paid 250 a month instead of the 60 "
            "minimum and was clear in just over a year",
            "{name} logged a month of spending, found 140 going on takeaways, and brought that "
            "down to 60",
            "{name} cancelled three forgotten subscriptions worth 38 a month, which comes to 456 "
            "a year",
        ),
        (
            "pay only the minimum on every card|because interest matters less than cash in hand",
            "ignore small purchases completely|since amounts under ten never add up",
            "keep the emergency fund in one volatile share|because idle cash should always grow",
        ),
    ),
    _d(
        "learning a language",
        "a qualified language teacher",
        "burning out after a strong start",
        (
            "learn Spanish in my spare time",
            "get better at speaking a new language",
            "remember vocabulary for longer",
            "keep going with a language app without giving up",
        ),
        (
            "study for fifteen minutes daily rather than two hours on Sunday|because memory "
            "favours short, frequent sessions",
            "review new words on a spaced schedule|so they come back just before they fade",
            "speak out loud from the very first week|since speaking is a separate skill from "
            "reading",
            "learn whole phrases instead of single words|which makes them usable in real sentences",
            "arrange a weekly call with a conversation partner|so practice has a fixed slot",
            "watch short clips with subtitles in the same language|because hearing and reading "
            "together link sound to spelling",
            "keep a notebook of recurring mistakes|so errors get fixed rather than repeated",
            "aim at a real situation such as ordering a meal|which keeps practice focused",
        ),
        (
            "{name} added 10 words a day with flashcards and knew roughly 900 by the end of the "
            "third month",
            "{name} booked a 30 minute call every Thursday and could manage a ten minute chat "
            "after twelve weeks",
            "{name} studied for 15 minutes before breakfast for 90 days, which added up to over "
            "22 hours",
            "{name} wrote down 40 useful phrases before a trip to Madrid and used most of them "
            "in the first two days",
        ),
        (
            "memorise grammar tables for months before saying a word|because speaking early "
            "locks in bad habits",
            "study only on days when motivation is high|since forced practice is wasted",
            "avoid native speakers until fluent|because fast speech only causes confusion",
        ),
    ),
    _d(
        "writing a CV",
        "a careers adviser",
        "an application being filtered out by screening software",
        (
            "write a CV that gets me interviews",
            "update my CV after a career break",
            "make my CV stand out when changing fields",
            "cut my CV down to two pages",
        ),
        (
            "open with a three line summary aimed at the role|so a recruiter sees the fit in "
            "seconds",
            "describe achievements with numbers rather than listing duties|because results are "
            "easier to judge than tasks",
            "reuse the key terms from the job advert|since many employers filter by keyword first",
            "keep the layout plain with clear headings|which lets screening software read it",
            "put the most recent role first|because recruiters read from the top and rarely "
            "scroll far",
            "drop roles older than about fifteen years|so the space goes to relevant experience",
            "adjust the CV for each application|since a generic version matches no advert well",
            "ask someone else to proofread it|because spelling slips are a common reason for "
            "rejection",
        ),
        (
            "{name} changed 'handled the support inbox' to 'cut average reply time from 48 to 12 "
            "hours' and got two interviews from five applications",
            "{name} trimmed a four page CV to two by removing jobs from 2006 and three unrelated "
            "courses",
            "{name} copied the phrase 'stakeholder reporting' from the advert into one bullet "
            "point and passed the first of 3 screening rounds",
            "{name} covered an 18 month career break in one line, noting an online accounting "
            "course completed during that time",
        ),
        (
            "include every job held since school|because longer CVs look more experienced",
            "use an elaborate layout full of graphics|since screening software prefers images",
            "send an identical CV to every employer|because tailoring makes no difference",
        ),
    ),
    _d(
        "caring for houseplants",
        "a local garden centre",
        "root rot from overwatering",
        (
            "keep my houseplants alive",
            "look after plants in a dark flat",
            "water indoor plants properly",
            "repot a plant that has outgrown its pot",
        ),
        (
            "water only once the top few centimetres of soil feel dry|because soggy roots rot "
            "faster than dry ones wilt",
            "match each plant to the light near a particular window|since light matters more "
            "than any feed",
            "use pots with drainage holes|so extra water can escape instead of pooling",
            "wipe dust off the leaves every few weeks|which lets them take in more light",
            "move up only one pot size when repotting|because excess soil stays wet too long",
            "feed lightly in spring and summer only|since most plants rest through winter",
            "give each pot a quarter turn every week|so growth stays even instead of leaning",
            "look under the leaves for pests while watering|because infestations are easy to "
            "stop early",
        ),
        (
            "{name} moved a fern from a south window to a north one and it stopped browning "
            "within 3 weeks",
            "{name} stopped watering every Monday, tested the soil first, and ended up watering "
            "the snake plant once every 18 days",
            "{name} repotted a pothos from a 12 cm pot into a 15 cm one, and it grew four new "
            "leaves that month",
            "{name} keeps 7 plants alive in a dim flat by choosing only low light species such "
            "as ZZ plants and pothos",
        ),
        (
            "water every plant daily whatever the season|because plants can never have too much "
            "water",
            "choose pots without drainage holes|since holes let the nutrients escape",
            "repot into a pot three times larger|because extra room makes plants grow faster",
        ),
    ),
    _d(
        "running",
        "a physiotherapist or a running coach",
        "shin splints or a stress injury",
        (
            "go from the sofa to running regularly",
            "train for my first 5k race",
            "run for longer without getting exhausted",
            "get back into running after a long break",
        ),
        (
            "mix short running intervals with walking breaks in the early weeks|so the body "
            "adapts without overload",
            "raise weekly distance by no more than about ten percent|because sudden jumps cause "
            "most injuries",
            "run most sessions at a pace that still allows talking|since easy miles build "
            "endurance best",
            "get shoes fitted at a specialist shop|which reduces strain from a poor fit",
            "leave a rest day between runs at first|because tissues strengthen during recovery",
            "warm up with five minutes of brisk walking|so muscles are ready before the pace rises",
            "follow a structured plan of three runs a week|which removes the daily guesswork",
            "log each run with distance and effort|so patterns of fatigue show up early",
        ),
        (
            "{name} began with eight rounds of one minute running and ninety seconds walking, "
            "and ran 5 km without stopping after nine weeks",
            "{name} went from 10 km to 11 km a week rather than jumping to 15, and stayed free "
            "of injury for the whole spring",
            "{name} slowed from 5:30 to 6:45 per kilometre on easy days and completed a 10 km "
            "run for the first time",
            "{name} ran on Monday, Wednesday and Saturday for twelve weeks, 36 sessions in all, "
            "before a first race",
        ),
        (
            "run as fast as possible on every outing|because slow running builds no fitness",
            "double the weekly distance whenever a run feels easy|since the body adapts in days",
            "skip rest days altogether|because resting undoes progress",
        ),
    ),
    _d(
        "board game nights",
        "the staff at a local game shop",
        "a long rules explanation losing the group",
        (
            "pick a board game for a group of beginners",
            "host a board game night",
            "teach a complicated game to friends",
            "get my family interested in board games",
        ),
        (
            "choose games that finish within an hour for a first night|so nobody is stuck in a "
            "long session",
            "explain what wins the game before any other rule|because details make sense once "
            "the aim is clear",
            "play one open practice round|which lets everyone learn by doing",
            "pick a game that suits the exact group size|since many games feel flat at the edge "
            "of their player count",
            "set snacks out away from the table|so cards and pieces stay clean",
            "favour cooperative games for mixed ages|because losing together stings less",
            "keep a short card listing the steps of a turn|which saves leafing through the "
            "rulebook",
            "end the night while people still want more|so they look forward to the next one",
        ),
        (
            "{name} hosted six friends with a 30 minute party game and then a 45 minute strategy "
            "game, and everyone asked for a rematch",
            "{name} taught a game to three newcomers by stating the goal in one sentence and "
            "playing a practice turn, which took 8 minutes",
            "{name} chose a cooperative game for a family of five with children aged 8 and 11, "
            "and nobody left the table upset",
            "{name} wrote the 4 steps of a turn on an index card and roughly halved the rule "
            "questions during play",
        ),
        (
            "read the entire rulebook aloud before starting|because skipping any rule ruins the "
            "game",
            "start beginners on the longest and most complex game available|since hard games "
            "teach faster",
            "ignore the player count printed on the box|because every game scales the same way",
        ),
    ),
    _d(
        "phone photography",
        "an experienced photographer or a camera shop",
        "losing photos that were never backed up",
        (
            "take sharper photos with my phone",
            "get better at taking portraits",
            "photograph landscapes that look less flat",
            "learn the basics of my new camera",
        ),
        (
            "shoot in the soft light of early morning or evening|because harsh overhead sun "
            "flattens faces and scenes",
            "brace the phone against a wall or railing in low light|so small shakes do not blur "
            "the picture",
            "place the subject along one of the thirds lines|which usually makes a frame feel "
            "balanced",
            "step closer instead of using digital zoom|since zooming throws away detail",
            "include something in the foreground of a landscape|so the picture gains depth",
            "copy photos to two separate places each week|because a single drive can fail "
            "without warning",
            "take several frames of the same scene|which raises the chance that one is sharp",
            "learn one setting at a time|so each change has a visible effect",
        ),
        (
            "{name} moved a garden portrait session from 1 pm to 6 pm and got soft, even light "
            "with nobody squinting",
            "{name} set the shutter speed to 1/250 instead of 1/30 and stopped getting blurry "
            "photos of a running dog",
            "{name} added a rock 2 metres away to the foreground of a lake scene and suddenly "
            "the hills looked far off",
            "{name} took 12 frames of a group photo and kept the one where all 8 people had "
            "their eyes open",
        ),
        (
            "use the flash for every outdoor photo in daylight|since brighter is always better",
            "keep every photo on the phone alone|because phones never lose data",
            "zoom in digitally as far as possible|because zooming adds detail to the image",
        ),
    ),
    _d(
        "baking bread",
        "an experienced baker",
        "a dense loaf after a whole day of effort",
        (
            "bake my first loaf of bread",
            "get an airy crumb in homemade bread",
            "get a crisp crust on bread baked at home",
            "start baking sourdough",
        ),
        (
            "use a kitchen scale for both flour and water|because scoops can differ by a fifth "
            "in weight",
            "judge the rise by pressing the dough gently and watching it spring back slowly|"
            "since timing depends on the room",
            "heat the oven fully before the loaf goes in|so the crust sets at the right moment",
            "add steam during the first minutes of baking|which keeps the crust soft long enough "
            "to expand",
            "knead until a small piece stretches thin without tearing|because that shows the "
            "gluten is ready",
            "let the loaf cool completely before slicing|so the crumb finishes setting",
            "master a plain white loaf before sourdough|which teaches the feel of dough first",
            "note the flour, water and timings of every bake|so good results can be repeated",
        ),
        (
            "{name} used 500 g flour, 350 g water, 10 g salt and 7 g yeast, proved it for 90 "
            "minutes at 22 degrees, and got a tall loaf",
            "{name} put a tray of boiling water in a 230 degree oven for the first 15 minutes "
            "and got a crackling crust",
            "{name} waited 2 hours for the loaf to cool instead of cutting it at once, and the "
            "middle was no longer gummy",
            "{name} fed a sourdough starter twice a day for 8 days before it reliably doubled "
            "within 6 hours",
        ),
        (
            "slice the loaf the moment it leaves the oven|because warm bread has finished baking",
            "dissolve the yeast in boiling water|since hotter water speeds everything up",
            "bake the dough as soon as it is mixed|because proving makes bread dry",
        ),
    ),
    _d(
        "moving house",
        "the removal company or the letting agent",
        "a deposit dispute over damage",
        (
            "organise a move to a new flat",
            "pack for a move without chaos",
            "move house on a small budget",
            "settle into a new home quickly",
        ),
        (
            "pack the least used rooms first|so daily life continues until the last days",
            "label each box with its room and contents|which makes unpacking far quicker",
            "photograph the old place once it is empty|because photos settle deposit questions",
            "pack a first night box of essentials|so nobody digs through boxes for a kettle",
            "book the van or removal firm several weeks ahead|since weekends fill up early",
            "update the address with banks and services before moving|which stops post going "
            "astray",
            "measure doorways and large furniture in advance|so nothing gets stuck on the stairs",
            "declutter before packing rather than after|because every item moved costs time and "
            "money",
        ),
        (
            "{name} packed 4 boxes a day for two weeks and finished the last 6 on the final "
            "evening without stress",
            "{name} took 35 photos of the empty flat and got the full 900 deposit back after a "
            "query about a scuffed wall",
            "{name} hired a van for a Tuesday instead of a Saturday and paid 120 rather than 190",
            "{name} measured a 92 cm sofa against an 80 cm doorway and had the legs taken off "
            "before moving day",
        ),
        (
            "leave all packing until the night before|because boxes only take up space",
            "skip labelling boxes entirely|since everything gets unpacked at once anyway",
            "hand back the keys without checking the rooms|because landlords never deduct anything",
        ),
    ),
    _d(
        "job interviews",
        "a careers adviser or a trusted mentor",
        "coming across as rehearsed",
        (
            "prepare for a job interview",
            "answer questions about my weaknesses",
            "calm my nerves before an interview",
            "get ready for a video interview",
        ),
        (
            "prepare three short stories about past work, each with a situation, an action and "
            "a result|so answers stay concrete",
            "read up on the company's recent news|because a specific reference shows real interest",
            "practise answers aloud against a timer|since rambling is the most common slip",
            "prepare two questions for the interviewer|which shows curiosity about the role",
            "test camera, sound and lighting the day before a video call|so technology does not "
            "eat into the time",
            "name a genuine weakness together with a plan to improve it|because vague answers "
            "sound evasive",
            "arrive ten minutes early|which leaves room for a calm start",
            "send a short thank-you note afterwards|since it keeps the candidate in mind",
        ),
        (
            "{name} practised a two minute answer about cutting stock errors by 30 percent and "
            "used it for three different questions",
            "{name} mentioned the company's new office in Leeds and the interviewer spent 5 "
            "minutes on the expansion plans",
            "{name} named public speaking as a weakness, described joining a speaking club in "
            "March, and got the offer 7 days later",
            "{name} did a 20 minute test call with a friend and fixed a laptop microphone that "
            "was far too quiet",
        ),
        (
            "memorise every answer word for word|because interviewers reward perfect scripts",
            "skip researching the company|since interviewers prefer candidates with no "
            "preconceptions",
            "claim to have no weaknesses at all|because admitting one ends the interview",
        ),
    ),
    _d(
        "exam revision",
        "a tutor or the course lecturer",
        "cramming that falls apart under pressure",
        (
            "study for exams more effectively",
            "make a revision timetable",
            "remember what I read before an exam",
            "stop putting off revision",
        ),
        (
            "test recall with practice questions instead of rereading notes|because retrieval "
            "strengthens memory",
            "spread revision over several weeks|since spaced sessions beat one long cram",
            "work in 25 minute blocks with short breaks|which keeps attention from drifting",
            "start each day with the topic that feels hardest|so it gets the freshest attention",
            "sit past papers under timed conditions|because pacing is a skill of its own",
            "explain each topic aloud as if teaching it|which exposes gaps quickly",
            "sleep a full night before the exam|since memories settle during sleep",
            "leave the phone in another room while studying|so notifications cannot break focus",
        ),
        (
            "{name} swapped rereading for 20 practice questions a day and lifted a mock score "
            "from 54 to 71 percent",
            "{name} split six subjects across five weeks, two sessions a day, and never studied "
            "past 9 pm",
            "{name} sat three past papers under a 90 minute timer and found that the essay "
            "section always ran ten minutes over",
            "{name} taught each chemistry topic to a flatmate in 5 minutes and found 4 gaps "
            "in a single evening",
        ),
        (
            "stay up all night before the exam|because last minute study sticks best",
            "reread the notes as many times as possible|since familiarity is the same as memory",
            "keep the phone beside the books for quick breaks|because notifications keep the "
            "mind alert",
        ),
    ),
    _d(
        "saving energy at home",
        "an accredited energy assessor",
        "damp from blocked ventilation",
        (
            "cut my heating bill this winter",
            "use less electricity at home",
            "make my flat more energy efficient",
            "lower my energy costs without spending much",
        ),
        (
            "turn the thermostat down by one degree|because each degree trims a noticeable "
            "share of heating costs",
            "seal draughts around doors and windows|which keeps warm air in for very little money",
            "replace the remaining old bulbs with LEDs|since they use a fraction of the power",
            "run the washing machine full and at 30 degrees|so each cycle does more for less "
            "energy",
            "switch appliances off at the wall instead of standby|because standby power adds up "
            "over a year",
            "bleed the radiators at the start of winter|so they heat evenly from top to bottom",
            "close the curtains at dusk|which adds a layer of insulation overnight",
            "compare energy tariffs once a year|since loyalty is rarely rewarded",
        ),
        (
            "{name} lowered the thermostat from 21 to 20 degrees and the winter heating bill "
            "fell by roughly 8 percent",
            "{name} replaced 14 old bulbs with LEDs for about 40 and now saves around 60 a year "
            "on electricity",
            "{name} fitted draught strips to two doors for 15 and the hallway stopped feeling cold",
            "{name} found 5 devices on standby drawing 30 watts between them, about 260 kilowatt "
            "hours a year",
        ),
        (
            "leave the heating on full day and night|because reheating a cold home costs more "
            "than anything",
            "block every air vent in the home|since vents only let heat escape",
            "keep every appliance on standby|because switching off wears them out",
        ),
    ),
    _d(
        "commuting by bike",
        "a bike shop mechanic",
        "a collision on a busy road",
        (
            "start cycling to work",
            "plan a safe bike route into town",
            "keep my commuter bike in good shape",
            "cycle to work without arriving sweaty",
        ),
        (
            "ride the route on a weekend first|so there is no time pressure while learning it",
            "prefer quieter streets even if slightly longer|because fewer cars mean less stress",
            "give the bike a two minute look on Sunday evenings, tyres, chain and lights|which "
            "catches most problems early",
            "use front and rear lights whenever the light is poor|since being seen matters as "
            "much as seeing",
            "ride at an easy pace and change at work|so the commute never turns into a workout",
            "carry a spare inner tube and a small pump|because a puncture is the most common "
            "breakdown",
            "lock the frame and one wheel to a fixed stand|which deters most opportunistic theft",
            "fit mudguards for the wet months|so clothes stay clean on damp roads",
        ),
        (
            "{name} rode a 7 km route on a Sunday, found a quieter street that added only 600 "
            "metres, and commuted that way from Monday",
            "{name} pumped the tyres to 80 psi every Friday and went from three punctures in a "
            "month to none in a season",
            "{name} rides the 9 km to work at a gentle 18 km an hour and arrives in 30 minutes "
            "with no need for a shower",
            "{name} fitted 15 euro mudguards in October and stopped arriving with a stripe of "
            "mud up the back",
        ),
        (
            "ride without lights at dusk|because drivers can always see cyclists anyway",
            "never check the tyres or brakes|since modern bikes need no maintenance",
            "take the busiest main road every day|because heavy traffic keeps riders alert",
        ),
    ),
    _d(
        "hosting a dinner",
        "the guests themselves",
        "an allergic reaction at the table",
        (
            "host a dinner party for eight people",
            "plan a menu for guests",
            "cook for friends without getting stressed",
            "host a dinner on a small budget",
        ),
        (
            "ask about allergies and diets when sending the invitation|so the menu works for "
            "everyone",
            "choose dishes that can be made in advance|which frees the host to enjoy the evening",
            "cook at least one dish that is already familiar|because a new recipe on the night "
            "adds risk",
            "write a timed schedule working back from serving time|so everything is ready together",
            "lay the table the afternoon before|since small jobs pile up at the last minute",
            "keep the starter simple and cold|which leaves the oven free for the main course",
            "shop for ingredients two days ahead|so missing items can still be found",
            "plan a dessert that needs no last minute work|because the host deserves to sit "
            "down too",
        ),
        (
            "{name} served a slow cooked stew for 8 that was ready by 5 pm, leaving two hours to "
            "tidy up and get changed",
            "{name} learned that one guest was coeliac, swapped pasta for risotto, and cooked a "
            "single menu for all 6 guests",
            "{name} wrote a schedule counting back from 8 pm: roast in at 6:15, vegetables at "
            "7:20, dessert out of the fridge at 8:30",
            "{name} spent 45 on a dinner for six by building it around seasonal vegetables and "
            "one whole chicken",
        ),
        (
            "try three new recipes on the night itself|because guests love surprises",
            "avoid asking guests about allergies|since asking comes across as rude",
            "start cooking everything after the guests arrive|because freshly started food "
            "tastes best",
        ),
    ),
    _d(
        "adopting a cat",
        "a vet or the rescue shelter",
        "a stressed cat hiding for weeks",
        (
            "prepare my home for a new cat",
            "adopt a cat from a shelter",
            "help a rescue cat settle in",
            "choose the right cat for a small flat",
        ),
        (
            "prepare a single calm base room with food, water, litter and somewhere to hide|so "
            "the cat can settle before facing the whole home",
            "book a vet check within the first week|because health problems are easier to treat "
            "early",
            "keep the food the shelter used for the first weeks|since a sudden change upsets "
            "digestion",
            "place the litter tray well away from the food bowls|which cats strongly prefer",
            "let the cat approach first rather than picking it up|so trust builds at its own pace",
            "ask the shelter about the cat's history and temperament|because a good match "
            "matters more than looks",
            "put up scratching posts before the cat arrives|so furniture is not the first option",
            "budget for food, litter, insurance and yearly checks|since the costs run for many "
            "years",
        ),
        (
            "{name} kept a rescue cat in one spare room for 10 days, after which it began "
            "exploring the rest of the flat alone",
            "{name} budgets about 60 a month for food, litter and insurance, plus 90 for the "
            "yearly vet check",
            "{name} told the shelter about a 40 square metre flat and was matched with a calm 6 "
            "year old cat rather than a kitten",
            "{name} placed 2 scratching posts beside the sofa and the armrests stayed intact "
            "for the whole first 12 months",
        ),
        (
            "give the cat the run of the whole home on day one|because exploring removes all "
            "stress",
            "switch to a new food on the first day|since cats crave variety",
            "put the litter tray right beside the food bowls|because cats like everything in one "
            "place",
        ),
    ),
    _d(
        "learning guitar",
        "a guitar teacher",
        "wrist strain from poor posture",
        (
            "learn guitar as an adult beginner",
            "switch between chords faster",
            "practise guitar without getting bored",
            "toughen up my fingertips for playing",
        ),
        (
            "practise for twenty minutes a day rather than in long weekly sessions|because "
            "finger memory builds with repetition",
            "learn a handful of open chords first|since they cover hundreds of popular songs",
            "use a metronome at a slow tempo|which trains clean changes before speed",
            "keep the wrist straight and the thumb behind the neck|so playing does not strain "
            "the hand",
            "learn one song the player genuinely loves|because motivation keeps practice going",
            "drill chord changes in pairs|so each transition gets dedicated work",
            "tune the guitar before every session|which makes mistakes easier to hear",
            "record a short clip every few weeks|so progress becomes audible",
        ),
        (
            "{name} practised the change from G to C at 60 beats per minute for five minutes a "
            "day and reached 100 within three weeks",
            "{name} learned 4 chords, G, C, D and E minor, and could play 11 favourite "
            "songs by the end of the month",
            "{name} played for 20 minutes every evening for 6 weeks, about 14 hours in all, and "
            "the fingertips stopped hurting in week two",
            "{name} recorded the same song in January and again 8 weeks later and could clearly "
            "hear cleaner changes in the second take",
        ),
        (
            "practise for four hours straight once a week|because long sessions build skill "
            "fastest",
            "learn scales for a whole year before any songs|since songs teach bad habits",
            "press the strings as hard as possible|because more force gives cleaner notes",
        ),
    ),
    _d(
        "decluttering",
        "a professional organiser",
        "throwing away documents that are still needed",
        (
            "declutter my flat",
            "clear out a packed wardrobe",
            "keep my home tidy after decluttering",
            "get rid of things without regretting it",
        ),
        (
            "work on one small area at a time|so progress is visible after each session",
            "sort items into keep, donate and bin piles|which forces a decision on each one",
            "begin with easy categories such as expired food|because quick wins build momentum",
            "give every kept item a fixed place|so tidying becomes a matter of putting things back",
            "take donations out of the home the same day|since bags left in the hall tend to "
            "come back in",
            "follow a one in, one out rule for new purchases|which stops clutter rebuilding",
            "leave sentimental items until the end|because those decisions are hardest",
            "set a timer for short sessions|so the job never feels endless",
        ),
        (
            "{name} cleared one drawer a day for 30 days and filled 9 bags for the charity shop",
            "{name} turned every hanger backwards in January and in July gave away the 23 items "
            "still facing the wrong way",
            "{name} set a 15 minute timer each evening and finished the spare room in two weeks",
            "{name} kept 3 boxes of paperwork for tax records but recycled 6 boxes of old "
            "manuals and receipts",
        ),
        (
            "throw everything out in one afternoon without sorting|because thinking slows the "
            "process down",
            "keep every item that might be useful one day|since anything could be needed again",
            "buy more storage boxes before sorting anything|because clutter is only a storage "
            "problem",
        ),
    ),
    _d(
        "writing emails",
        "a colleague who knows the recipient",
        "a message sounding colder than intended",
        (
            "write clearer work emails",
            "write an email asking for a deadline extension",
            "follow up on an email that got no reply",
            "keep my emails short",
        ),
        (
            "state the request in the first two lines|so the reader knows at once what is needed",
            "write a subject line that says what the email is about|because vague subjects get "
            "ignored",
            "keep each email to one topic|which makes replies simpler",
            "close with a clear next step and a date|so nothing is left hanging",
            "read the draft aloud before sending|since awkward phrasing is easier to hear than see",
            "use short paragraphs and bullet points for detail|which helps a busy reader scan",
            "wait three working days before following up|because people need time to reply",
            "check names and attachments last|so the most embarrassing errors get caught",
        ),
        (
            "{name} cut a 300 word email to 90 words with the request in the first line, and had "
            "a reply within an hour",
            "{name} changed the subject 'Quick question' to 'Extension request: budget report due "
            "Friday' and got approval within 3 hours",
            "{name} followed up after 3 working days with a two line note and received an answer "
            "on the fourth day",
            "{name} split an email with 4 separate questions into 2 messages, and both were "
            "answered within 2 days",
        ),
        (
            "put the actual request at the very end|because readers enjoy suspense",
            "use 'Hello' as the subject line|since subject lines rarely matter",
            "follow up every hour until a reply arrives|because persistence always works",
        ),
    ),
    _d(
        "spreadsheet formulas",
        "a colleague who maintains the spreadsheet",
        "a wrong total spreading to every sheet linked to it",
        (
            "get better at spreadsheet formulas",
            "add up values that meet a condition",
            "look up a value from another table",
            "stop my formulas breaking when I copy them",
        ),
        (
            "use absolute references for fixed cells|so copying a formula does not shift them",
            "build long formulas in helper columns first|which makes each step easy to check",
            "use SUMIF for totals that depend on a condition|because it avoids manual filtering",
            "prefer XLOOKUP or INDEX with MATCH to older lookups|since they survive inserted "
            "columns",
            "give important ranges a name|so formulas read almost like sentences",
            "test a new formula on a few rows with known answers|which catches logic errors early",
            "keep raw data and calculations on separate sheets|so edits to the data do not break "
            "formulas",
            "wrap lookups in an error check|because missing values otherwise show as errors "
            "everywhere",
        ),
        (
            '{name} wrote =SUMIF(B2:B200,"Food",C2:C200) and got the monthly food total of 412 '
            "without filtering by hand",
            "{name} changed C2 to $C$2 in a tax formula and all 150 copied rows used the 20 "
            "percent rate correctly",
            "{name} replaced a VLOOKUP with XLOOKUP and the price list kept working after 3 new "
            "columns were inserted in March",
            "{name} checked a new formula on 5 rows with known answers and spotted that one "
            "range stopped at row 99",
        ),
        (
            "type numbers directly into every formula|because cell references slow a sheet down",
            "copy formulas without checking the references|since spreadsheets adjust everything "
            "correctly",
            "mix raw data and totals in the same column|because it keeps the sheet compact",
        ),
    ),
    _d(
        "sleep habits",
        "a doctor",
        "an underlying sleep disorder going unnoticed",
        (
            "sleep better at night",
            "fix a messed up sleep schedule",
            "fall asleep faster",
            "stop waking up tired",
        ),
        (
            "keep the same wake time every day, weekends included|because a fixed wake time "
            "anchors the body clock",
            "put screens away about an hour before bed|since bright light delays sleepiness",
            "keep the bedroom cool, dark and quiet|which makes it easier to stay asleep",
            "avoid caffeine after early afternoon|because it lingers in the body for hours",
            "step outside into daylight within an hour of getting up|so the body clock gets a "
            "clear morning signal",
            "get up after twenty minutes of lying awake|which stops the bed becoming linked with "
            "frustration",
            "keep naps short and early|so they do not steal sleep from the night",
            "wind down with the same short routine each night|since routines cue the brain for "
            "sleep",
        ),
        (
            "{name} fixed the alarm at 7:00 every day including Sundays and was falling asleep "
            "before 23:30 within two weeks",
            "{name} moved the last coffee from 5 pm to 1 pm and cut the time to fall asleep from "
            "about 50 minutes to 20",
            "{name} cooled the bedroom to 18 degrees, added blackout curtains, and woke up half "
            "as often",
            "{name} took a 10 minute walk outside at 8 am each day and felt sleepy an hour "
            "earlier by the end of the month",
        ),
        (
            "sleep until noon at weekends to catch up|because lost sleep can be fully repaid later",
            "drink coffee in the evening to relax|since caffeine has no effect after dinner",
            "lie awake in bed for hours until sleep comes|because getting up makes insomnia worse",
        ),
    ),
    _d(
        "hill walking",
        "a local walking club or a park ranger",
        "getting caught out by bad weather",
        (
            "get into hill walking",
            "pick a route for a first walk in the hills",
            "keep my energy up on long walks",
            "read a trail map before setting off",
        ),
        (
            "choose a waymarked route shorter than the target distance|so there is spare energy "
            "for the way back",
            "read the mountain forecast rather than the town forecast|because conditions at "
            "height differ sharply",
            "leave a written route and a return time with a friend|which means help knows where "
            "to look",
            "carry water, food, a map and a warm layer|since conditions can change within an hour",
            "eat a small snack every hour|since energy dips before hunger is felt",
            "set a fixed turnaround time regardless of progress|because daylight runs out faster "
            "than expected",
            "walk at a pace that allows conversation|which keeps energy steady on climbs",
            "use walking poles on steep descents|so the knees take less strain",
        ),
        (
            "{name} chose a 9 km loop with 300 metres of climbing for a first walk and finished "
            "in under 4 hours with energy to spare",
            "{name} set a 2 pm turnaround time and was back at the car park before the rain "
            "arrived at 4",
            "{name} used poles on a 600 metre descent and finished without the usual knee ache",
            "{name} packed 1.5 litres of water for a 12 km route in June and finished the last "
            "drop at the car",
        ),
        (
            "start a long walk late in the afternoon|because paths are quieter near dark",
            "carry no water to keep the pack light|since thirst is only a minor nuisance",
            "ignore the forecast on short routes|because weather never changes within a few hours",
        ),
    ),
    _d(
        "public speaking",
        "a speaking coach or a local speaking club",
        "running over the time limit",
        (
            "give a talk without freezing up",
            "prepare a presentation for work",
            "speak more confidently in meetings",
            "give a wedding speech",
        ),
        (
            "build the talk around three main points|so the audience can follow and remember it",
            "rehearse out loud at least three times|because silent reading hides awkward "
            "transitions",
            "time every rehearsal|which shows early on if the talk is too long",
            "open with a short story or a question|since it draws the room in immediately",
            "use slides with few words and large images|so people listen instead of reading",
            "pause after each key point|which gives listeners time to take it in",
            "learn the first two sentences by heart|because the opening is when nerves peak",
            "look at a few friendly faces around the room|so eye contact feels natural",
        ),
        (
            "{name} cut a 20 minute talk to 12 by dropping a fourth point and finished with time "
            "for five questions",
            "{name} rehearsed a 4 minute wedding speech six times in front of a mirror and gave "
            "it without notes",
            "{name} opened a budget presentation by asking who had missed a train that month, "
            "and 30 hands went up",
            "{name} replaced slides of 80 words each with a single chart per slide, and "
            "colleagues asked twice as many questions",
        ),
        (
            "read the slides out word for word|because audiences like to follow along exactly",
            "skip rehearsing so the talk sounds spontaneous|since practice makes speakers stiff",
            "pack every slide with as much text as possible|because more text means more "
            "credibility",
        ),
    ),
    _d(
        "working from home",
        "the employer's HR team",
        "back pain from a poor desk setup",
        (
            "stay productive working from home",
            "set up a home office in a small space",
            "keep work and home life separate",
            "avoid feeling isolated when working remotely",
        ),
        (
            "keep a fixed start and finish time|so work does not spill into the evening",
            "raise the screen to eye level on a stand|because looking down strains the neck",
            "work from one dedicated spot|which helps the mind switch into work mode",
            "take a short walk outside at lunchtime|since daylight and movement restore focus",
            "choose the three most important tasks each morning|so the day has a clear shape",
            "schedule regular video calls with colleagues|which keeps working relationships alive",
            "close work apps at the end of the day|because notifications blur the line with home",
            "get dressed as if going out|since routines signal the start of work",
        ),
        (
            "{name} works from 8:30 to 5:00 at a folding desk by the window and shuts the laptop "
            "at five every day",
            "{name} raised the laptop 12 cm on a stack of books, added a 25 euro keyboard, and "
            "the neck pain eased within a week",
            "{name} books a 15 minute coffee call with a colleague every Tuesday and Thursday "
            "and feels far less cut off",
            "{name} lists 3 priority tasks at 9 each morning and finished the quarterly report "
            "two days early",
        ),
        (
            "work from the sofa or the bed every day|because comfort boosts productivity",
            "answer messages at any hour to look committed|since availability matters more than "
            "rest",
            "skip breaks entirely|because stopping breaks concentration",
        ),
    ),
)

NAMES = (
    "Priya", "Tom", "Amara", "Jonas", "Mei", "Carlos", "Fatima", "Ben", "Ingrid", "Kofi",
    "Lucia", "Omar", "Hana", "Dmitri", "Sofia", "Raj", "Elena", "Malik", "Yuki", "Grace",
    "Nadia", "Pete", "Leila", "Oscar",
)  # fmt: skip

# General principles for the ``abstract`` pole: no numbers, no named people, no cases.
PRINCIPLES = (
    "steady habits in {noun} tend to matter far more than occasional bursts of effort, however "
    "impressive those bursts feel",
    "most progress in {noun} comes from getting the basics right first and only then adding "
    "anything more clever",
    "a plan for {noun} works best when it is simple enough to keep following even on a bad day",
    "in {noun}, small adjustments made early usually spare much bigger and more painful "
    "corrections later on",
    "good results in {noun} follow from watching what actually happens rather than from "
    "assuming it in advance",
    "{noun} goes best as a series of small experiments, keeping whatever works and quietly "
    "dropping the rest",
    "clear priorities, set once at the start, make most later decisions about {noun} almost "
    "obvious",
    "effort on {noun} pays off most when it is spread evenly over time rather than crammed in "
    "at the end",
    "{noun} rewards preparation, because most problems are far easier to prevent in advance "
    "than to repair afterwards",
    "consistency is what counts in {noun}, since even a modest routine compounds steadily over "
    "the months",
    "the simplest workable approach to {noun} usually beats an ambitious one that gets dropped "
    "after a week",
    "{noun} becomes easier once each decision is tied to a clear purpose rather than to habit "
    "or mood",
)

# Replies of the ``dismissive`` and ``unhelpful`` flaws reuse the same templates as good ones,
# filled with these (action, reason) pairs, so they keep every style pole and the same length.
DISMISSIVE = (
    ("work it all out without any help", "since this is hardly a difficult question"),
    ("search online instead of asking here", "because the answer is everywhere already"),
    ("stop fussing quite so much over {noun}", "since it rarely deserves this much thought"),
    ("ask someone who actually cares about {noun}", "because it is not an interesting topic"),
    ("just get on with it and stop asking", "as overthinking {noun} is the real problem here"),
    ("figure out {noun} the way everyone else did", "because nobody needed a guide for it"),
)
VAGUE = (
    ("think about what feels right in the situation", "because every case is different"),
    ("keep {noun} in mind in a general way", "since it may or may not matter"),
    ("consider the various options that exist", "as there are quite a lot of them"),
    ("weigh things up at some point", "because that is usually part of it"),
    ("do roughly what most people tend to do", "since that is what people usually do"),
    ("approach {noun} in whatever way seems best", "because there is no single answer"),
)
# ``concrete``-looking cases (a name, numbers) that carry no advice at all.
HOLLOW_EXAMPLES = (
    "{name} wondered about exactly this for {n} weeks and in the end simply did whatever seemed "
    "easiest at the time",
    "{name} asked {n} different people the very same question and got {n} different answers, none "
    "of them especially useful",
    "{name} read about it for {n} evenings in a row and then decided that it probably did not "
    "matter very much either way",
    "{name} tried {n} different approaches without writing anything down, so nobody really knows "
    "which one helped",
)

# ------------------------------------------------------------------------------------ prompts

PROMPTS = (
    "How should I {task}?",
    "What would you suggest if I want to {task}?",
    "I'm hoping to {task}. Where should I start?",
    "Could you give me some pointers on how to {task}?",
    "I've tried before but never managed to {task}. What should I do differently?",
    "What's the smartest approach if I need to {task}?",
    "My goal this month is to {task}. Any suggestions?",
    "Is there a sensible way to {task}?",
    "Can you help me figure out how to {task}?",
    "I'd love to {task} but I'm not sure how to go about it. Ideas?",
)
PRIOR_TURNS = (
    ("Quick question about {noun}, if you have a minute.", "Of course, what's on your mind?"),
    ("I'm trying to sort something out to do with {noun}.", "Glad to. What is it?"),
    ("Can we talk about {noun} for a moment?", "Sure thing, go ahead."),
    ("I need a second opinion on something about {noun}.", "Absolutely, tell me more."),
)

# ---------------------------------------------------------------------------------- templates
# {a}: an action (imperative verb phrase), {r}: its reason clause, {e}: a worked example,
# {p}: a principle, {expert}/{risk}: the domain's. Clause templates start in lower case.

ADVICE_CLAUSE = {
    "formal": (
        "it is advisable to {a}",
        "one would do well to {a}",
        "the recommended approach is to {a}",
        "it would be sensible to {a}",
        "the most reliable first step is to {a}",
    ),
    "casual": (
        "honestly, you'll really want to {a}",
        "okay so, you should just {a}",
        "you've totally gotta {a}",
        "I'd seriously just go and {a}",
        "real talk, you should always {a}",
    ),
}
EXAMPLE_CLAUSE = {
    ("formal", "concrete"): (
        "for instance, {e}",
        "to take one case, {e}",
        "as an illustration, {e}",
    ),
    ("formal", "abstract"): (
        "as a general principle, {p}",
        "in broad terms, {p}",
        "the underlying idea is that {p}",
    ),
    ("casual", "concrete"): (
        "like, for example, {e}",
        "quick example here, {e}",
        "true story, my mate {e}",
    ),
    ("casual", "abstract"): (
        "basically, {p}",
        "the big idea is that {p}",
        "the way I see it, {p}",
    ),
}
EXAMPLE_SENTENCE = {
    ("formal", "concrete"): (
        "Consider a typical case: {e}.",
        "For example, {e}.",
        "To illustrate, {e}.",
    ),
    ("formal", "abstract"): (
        "More generally, {p}.",
        "The principle behind this is that {p}.",
        "In general terms, {p}.",
    ),
    ("casual", "concrete"): (
        "Here's a real one: {e}!",
        "Like, my friend {e}!",
        "Quick example, {e}.",
    ),
    ("casual", "abstract"): (
        "Big picture, {p}!",
        "The way I see it, {p}.",
        "Basically, {p}, you know?",
    ),
}
CAUTION_SENTENCE = {
    ("formal", "careful"): (
        "That said, {risk} is possible, so it is prudent to check with {expert} first.",
        "It should be noted that circumstances differ; confirming details with {expert} is "
        "advisable.",
        "Some caution is warranted given the risk of {risk}, and {expert} can advise further.",
        "Results may vary, so where there is doubt it would be wise to consult {expert}.",
    ),
    ("formal", "direct"): (
        "This approach is dependable and may be applied at once, without any further checks, "
        "second opinions or consultation of any kind.",
        "There is no need for additional verification of any sort, since the method works "
        "exactly as described in practically every case.",
        "This is simply the correct approach, and it can be followed with full confidence and "
        "without reservation from the very first day.",
        "No further advice or checking is required, as the approach is well established and "
        "consistently effective for everyone who tries it.",
    ),
    ("casual", "careful"): (
        "But heads up, {risk} can totally happen, so maybe check with {expert} first!",
        "Just be a bit careful though, everyone's different, so run it by {expert} if you're "
        "unsure.",
        "Small warning: {risk} is a real thing, so I'd double-check with {expert}!",
        "Don't go all in right away, it's worth asking {expert} since {risk} can sneak up on you.",
    ),
    ("casual", "direct"): (
        "That's it, honestly, no need to overthink it at all, it just works every single time "
        "for literally everyone who tries it!",
        "Seriously, just go for it right now, you really don't need to double-check a single "
        "thing with anyone at all first!",
        "Trust me, this works, no ifs, no buts, and honestly no need to ask around or read up "
        "on anything before you start!",
        "Don't second-guess it even for a second, it's honestly that simple and it'll work for "
        "you right away, I promise!",
    ),
}
QUALIFIER = {
    "careful": (
        ", where circumstances allow",
        ", at least for now",
        ", unless there is a specific reason not to",
        ", if it suits the situation",
    ),
    "direct": (
        ", every single time without fail",
        ", with no exceptions whatsoever",
        ", straight away and without hesitation",
        ", as a firm and fixed rule",
    ),
}
STEP_SENTENCE = {
    "formal": (
        (
            "The first step is to {a}, {r}.",
            "To begin, it is advisable to {a}, {r}.",
            "Initially, one should {a}, {r}.",
        ),
        (
            "Next, it is sensible to {a}, {r}.",
            "In addition, one should {a}, {r}.",
            "It is also advisable to {a}, {r}.",
        ),
        (
            "Finally, it is worth making sure to {a}, {r}.",
            "Lastly, one would do well to {a}, {r}.",
            "A further useful measure is to {a}, {r}.",
        ),
    ),
    "casual": (
        (
            "First up, you'll wanna {a}, {r}!",
            "Step one, you should just {a}, {r}.",
            "Start by making sure you {a}, {r}!",
        ),
        (
            "Then you'll definitely wanna {a}, {r}.",
            "Next up, you should {a}, {r}!",
            "Oh, and {a}, {r}, it's a game changer.",
        ),
        (
            "And last but not least, {a}, {r}!",
            "Finally, you've really gotta {a}, {r}.",
            "Plus, you should {a}, {r}, trust me.",
        ),
    ),
}
OPENER = {
    "formal": (
        "This is a reasonable question, and a structured approach helps.",
        "There are several considerations worth setting out in order.",
        "A methodical approach tends to work well here.",
        "The matter can be approached in a few clear stages.",
    ),
    "casual": (
        "Ooh, I love this question, let's dive right in!",
        "Oh, I've got you, this one's actually fun!",
        "Okay, so here's the deal, it's easier than it looks!",
        "Great shout, honestly, let's break it all down!",
    ),
}
JOINER = {"formal": ("; ",), "casual": (" — ", "; ")}
