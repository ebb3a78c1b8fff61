"""Deterministic generator of the two fictional QA datasets of the mini tier (spec mini-2.2).

``mini-narrative`` mirrors NarrativeQA: the chronicle of an invented village and seven of its
residents. ``mini-health`` mirrors LongHealth: the case file of an invented patient, one letter
per hospital episode. Every name, town, drug, disease and number is made up, so a model cannot
answer without reading the document (or an adapter trained on it).

The three steps, and what each one may see
-------------------------------------------
1. **Fact base.** A document is a list of :class:`Fact` records: an *entity* (a resident; the
   patient or one of the patient's episodes), an *attribute* (birthplace, ward, dose, ...) and
   the answer. Values of one type are drawn without replacement, so every answer occurs once in
   the document and the other values of its type (six other birthplaces, six other wards) are
   its distractors. Each fact is written as one sentence; a resident's facts fall in two
   paragraphs far apart, and the patient's episodes run through the whole file, so facts are
   spread over the text and different evictions lose different facts.
2. **Training QA** (:func:`make_train_qa`) receives the fact base and a seed, nothing else: it
   picks the facts it covers (about half) and words one or two questions for each with its
   *own* templates (``Attribute.train_qs``). It plays the role of the paper's strong
   synthesiser, without its errors. It never sees an evaluation question.
3. **Evaluation questions** (:func:`eval_questions`) are drawn afterwards, worded with the
   disjoint ``Attribute.eval_qs`` templates, and tagged ``covered`` (their fact is the subject
   of a train_qa pair) or ``uncovered`` (no train_qa question or answer contains the fact's
   answer): 12 and 8 per document (``FOLDERS``).

Each document has its own ``random.Random(seed)``; only lists and tuples are iterated, so the
output is byte-identical across runs and Python versions. Run
``python -m benchmark.data.generate_mini [--out DIR] [--questions COVERED UNCOVERED]`` (default:
``benchmark/data/mini-2.2``, 12 and 8). Other counts change only the questions: the documents and
their ``train_qa`` stay the same, so adapters trained for one count serve another.
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

HERE = Path(__file__).resolve().parent
#: the data folders the package ships -> evaluation questions per document, (covered, uncovered); the
#: documents and their train_qa are the same in every folder, only the number of questions differs
FOLDERS = {"mini-2.2": (12, 8)}
CURRENT = "mini-2.2"  # the folder of the current mini spec
DEFAULT_OUT = HERE / CURRENT
SPLITS = (("test", 6, 0), ("dev", 4, 500))  # (split, number of documents, seed offset)
N_COVERED, N_UNCOVERED = FOLDERS[CURRENT]  # evaluation questions per document, by stratum
COVER_FRACTION = 0.5  # share of the fact base that make_train_qa covers
MIN_FACTS = 40
WORD_RANGE = (950, 1400)  # about 1,500-2,500 tokens with the Qwen2.5 tokenizer (README)

# ---------------------------------------------------------------- name pools (all invented)
FEMALE = ("Maren", "Ilse", "Thessaly", "Odile", "Brisca", "Yvaine", "Liesl", "Orla", "Senna",
          "Tamsin", "Wrenna", "Ysolde", "Perpetua", "Halla", "Ondine", "Marit", "Solveig",
          "Elowen", "Corisande", "Petronel", "Averil", "Jessamine", "Quenby", "Drusilla")
MALE = ("Osric", "Tobiah", "Lysander", "Corwin", "Anselm", "Bertil", "Evander", "Ambrose",
        "Gideon", "Halvard", "Ivo", "Jorund", "Leopold", "Mattias", "Nestor", "Orrin", "Piran",
        "Quillan", "Rafe", "Sigurd", "Teodor", "Ulric", "Wystan", "Barnaby")
SURNAMES = ("Oskvik", "Varnok", "Ashdell", "Quillon", "Dremmel", "Kestervane", "Marrable",
            "Nettlefold", "Pellowe", "Ruskell", "Tavistrom", "Ullathorne", "Vennick", "Wardlaw",
            "Yelverton", "Zorell", "Brackenbury", "Cawdrey", "Drummelow", "Elphick", "Gorrick",
            "Halloway", "Imbert", "Kettleby", "Lorrimer", "Mawdsley", "Orpwood", "Pennock",
            "Scarrow", "Threlkeld", "Fenwright", "Hollinrake", "Brisby", "Calloway", "Dunstable")
TOWNS = ("Varrowmere", "Quellstad", "Brindlecombe", "Harrowick", "Pellingrove", "Dunmarrow",
         "Skelvik", "Talbrook", "Marnhollow", "Corran Vale", "Elsbury Cross", "Wyndle",
         "Gorsemouth", "Haverlin", "Kestrelby", "Lundry Ford", "Mossbank", "Nethercliff",
         "Pembrick", "Quarvey", "Rookhaven", "Saltmere", "Thornvale", "Ulverholm", "Vesk",
         "Yarrowby", "Zellmoor", "Brackwater", "Caddon Heath", "Dorrowgate", "Fallowick",
         "Grimsetter", "Hollin Bay", "Ivelmouth", "Orrisby", "Tamsmoor")
STREETS = ("Tallow Lane", "Quince Street", "Gannet Row", "Marrow Street", "Coppice Lane",
           "Wicket Row", "Sorrel Street", "Ferrier's Walk", "Lantern Row", "Bellwether Lane",
           "Pumpkin Yard", "Hatchment Street", "Cobble Steps", "Mercer's Alley")
# narrative
TRADES = ("baker", "clockmaker", "bookbinder", "glassblower", "candlemaker", "saddler", "hatter",
          "printer", "cooper", "mapmaker", "herbalist", "lute maker", "ferry pilot", "weaver",
          "lock keeper", "stonemason", "beekeeper", "tanner", "net mender", "dyer")
ANIMALS = ("mule", "goose", "ferret", "raven", "goat", "greyhound", "tortoise", "jackdaw", "pony", "lurcher")
PET_NAMES = ("Bramblewick", "Tansy", "Quillet", "Mossfoot", "Pilchard", "Grettle", "Fennick",
             "Sorrowful", "Nutmeg", "Wobble", "Captain Crumb", "Parsnip", "Thistledown", "Duskwort")
SHIPS = ("Marigold Wren", "Patient Heron", "Saltwhistle", "Margery Bell", "Dauntless Plover",
         "Seventh Lantern", "Quiet Fulmar", "Copper Gannet", "Brisk Ermine", "Widow Pennyroyal")
ISLANDS = ("Skarra", "Venmoor", "Quiddon", "Tallowholm", "Orkessay", "Brannock", "Dunskerry",
           "Maelholm", "Grisby Holm", "Little Farrow")
BOOKS = ("Salt on the Sill", "The Lantern Ledger", "Small Bells in Winter", "A Quiet Reckoning",
         "Notes from the Kiln", "The Patient Kettle", "Crumbs and Compasses", "Rooks Over Water",
         "Letters to a Carter", "The Tallow Almanac", "Seven Crooked Chimneys")
AWARDS = ("Copper Thistle Medal", "Grey Heron Ribbon", "Quillfeather Prize", "Silver Wheel",
          "Order of the Lark", "Brassmoor Cup", "Lantern Medal", "Bellwether Shield")
SOCIETIES = ("Guild of Lowland Artisans", "Amberlane Civic Society", "Brotherhood of the Lantern",
             "Society of Patient Hands", "Fellowship of the Bell", "Company of Tinkers",
             "Kestrel Debating Club", "Order of Quiet Makers")
INSTRUMENTS = ("hurdy-gurdy", "bassoon", "concertina", "dulcimer", "cornet", "harmonium", "zither", "bagpipes")
DISHES = ("eel pie", "nettle soup", "plum dumplings", "barley broth", "smoked herring", "caraway cake",
          "mutton stew", "honey buns")
# health
DRUGS = ("Velatrixin", "Oxaprenol", "Dravocilin", "Menthazide", "Quorvatan", "Zelbrumide",
         "Tirasolone", "Fendaprax", "Corvimab", "Lunestrol", "Pexotrine", "Hallodrone", "Sarvanib",
         "Brixolate", "Tenevril", "Ombrazine", "Kaltemide", "Virexapam", "Nortaclin", "Ulvaprine")
DISEASES = ("Marrowell syndrome", "ochric nephritis", "Tessaly fever", "lamellar hepatopathy",
            "Brenner-Quist myositis", "granular pleural fibrosis", "Vosker anaemia",
            "episodic tarsal neuritis", "Kallendar disease", "Pellow-Drake syndrome",
            "reticular bile stasis", "Oster arteritis", "Halvard cardiomyopathy", "Corran fever")
REACTIONS = ("a blistering palm rash", "swelling of the eyelids", "violet wheals",
             "transient deafness", "a burning scalp", "yellow-tinged vision")
ANALYTES = (("serum trevinase", "U/L", 12, 140, 0), ("plasma orvalin", "ng/mL", 1.5, 40.0, 1),
            ("urinary celestrin", "mg/L", 0.2, 9.0, 2), ("serum kalvate", "mmol/L", 2.0, 14.0, 1),
            ("Hessler factor", "IU/mL", 20, 400, 0), ("blood quellan", "g/L", 3.0, 28.0, 1),
            ("serum ambrine", "umol/L", 40, 300, 0), ("plasma dorsin", "pg/mL", 5, 95, 0))
JOBS = ("ferry pilot", "lock keeper", "peat cutter", "piano tuner", "saddler", "net mender",
        "bell founder", "tram conductor", "kiln worker", "harbour clerk")
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")


# ---------------------------------------------------------------- attributes and facts
@dataclass(frozen=True)
class Attribute:
    """One kind of fact: prose templates (each holds ``{value}`` once), and two disjoint
    question-template sets, one for evaluation and one for training."""

    name: str
    prose: tuple[str, ...]
    eval_qs: tuple[str, ...]
    train_qs: tuple[str, ...]


@dataclass(frozen=True)
class Fact:
    """One askable fact of a document: ``slots`` fill the templates (``E`` names the entity)."""

    fact_id: str
    attribute: Attribute
    answer: str
    slots: tuple[tuple[str, str], ...]

    def fill(self, template: str) -> str:
        text = template.format(**dict(self.slots), value=self.answer)
        return text[0].upper() + text[1:]

    @property
    def answers(self) -> list[str]:
        return [self.answer]


A = Attribute
NARRATIVE_ATTRIBUTES = (
    A("birthplace", ("{E} was born in {value}, far from {village}.", "{E} was born in the town of {value}."),
      ("In which town was {E} born?",), ("What is the birthplace of {E}?", "{E} was born where?")),
    A("trade", ("{E} earned a living as a {value}.", "By trade, {E} was a {value}."),
      ("What was {E}'s trade?",), ("How did {E} earn a living?", "What work did {E} do?")),
    A("street", ("{E} lived and worked on {value}.", "{E}'s house stood on {value}, near the market."),
      ("On which street did {E} live?",),
      ("Where in the village was {E}'s house?", "{E} had a house on which street?")),
    A("pet", ("{E} kept a {animal} named {value}.", "Everyone knew {E}'s {animal}, which was called {value}."),
      ("What was the name of {E}'s {animal}?",),
      ("What was {E}'s {animal} called?", "Name the {animal} that {E} kept.")),
    A("arrival", ("{E} arrived in {village} in {value}.", "It was in {value} that {E} settled in {village}."),
      ("In which year did {E} arrive in {village}?",),
      ("When did {E} settle in {village}?", "{E} came to {village} in what year?")),
    A("spouse", ("{E} married {value}, who came from a family of millers.", "{E}'s spouse was {value}."),
      ("Whom did {E} marry?",), ("Who was {E}'s spouse?", "Name the person {E} married.")),
    A("ship", ("Once, {E} sailed to the islands aboard the {value}.",
               "{E} crossed the sound on a ship called the {value}."),
      ("Aboard which ship did {E} sail?",), ("What was the ship that carried {E}?", "{E} travelled on which vessel?")),
    A("island", ("{E} spent one summer on the island of {value}.", "{E} once lived for a year on {value}."),
      ("Which island did {E} stay on?",),
      ("On what island did {E} spend time?", "{E} lived for a while on which island?")),
    A("book", ("{E} wrote a small book titled {value}.", "{E} was the author of a pamphlet called {value}."),
      ("What was the title of the book {E} wrote?",), ("Which book was written by {E}?", "{E} wrote what book?")),
    A("award", ("{E} was awarded the {value}.", "The village gave {E} the {value}."),
      ("Which honour did {E} receive?",), ("What award did {E} win?", "{E} was given which prize?")),
    A("society", ("{E} was a member of the {value}.", "{E} joined the {value} as a young adult."),
      ("Which society did {E} belong to?",), ("What club was {E} a member of?", "{E} joined which society?")),
    A("instrument", ("In the evenings, {E} played the {value}.", "{E} was fond of playing the {value}."),
      ("Which instrument did {E} play?",), ("What did {E} play in the evenings?", "{E}'s instrument was what?")),
    A("dish", ("{E}'s favourite dish was {value}.", "{E} cooked {value} for every feast day."),
      ("What was {E}'s favourite dish?",), ("Which food did {E} like best?", "{E} cooked which dish on feast days?")),
)
HEALTH_PATIENT_ATTRIBUTES = (
    A("home_town", ("{E} lives in {value}.", "{E}'s home is in {value}."),
      ("In which town does {E} live?",), ("Where is {E}'s home?", "{E} comes from which town?")),
    A("occupation", ("{E} works as a {value}.", "By occupation {E} is a {value}."),
      ("What is {E}'s occupation?",), ("What does {E} do for work?", "{E} is employed as what?")),
    A("gp", ("{E}'s family doctor is Dr. {value}.", "{E} is registered with Dr. {value} at the village surgery."),
      ("Who is {E}'s family doctor?",), ("Which GP looks after {E}?", "{E} is registered with which doctor?")),
    A("allergy", ("{E} is allergic to {value}.", "{E} reacted badly to {value} in the past and must not receive it."),
      ("Which drug is {E} allergic to?",),
      ("What medicine must {E} never be given?", "{E} has an allergy to what drug?")),
    A("reaction", ("The allergic reaction consisted of {value}.", "On that occasion the reaction was {value}."),
      ("What reaction did {E} have to the drug {E_pos} is allergic to?",),
      ("How did {E}'s allergy show itself?", "Describe {E}'s allergic reaction.")),
)
HEALTH_EPISODE_ATTRIBUTES = (  # a lab value is asked with its unit in the question, so a guessed unit scores 0
    A("town", ("For the {E}, {P} was treated at the hospital in {value}.",
               "{P} was admitted to the hospital in {value} with {E}."),
      ("In which town was {P} treated for {E}?",),
      ("Where was {P} hospitalised with {E}?", "{P}'s {E} was treated in which town?")),
    A("year", ("{P} came in with {E} in {month} {value}.", "The {E} admission began in {month} {value}."),
      ("In which year was {P} admitted with {E}?",),
      ("When did the {E} admission start?", "{P}'s {E} admission began in which year?")),
    A("clinician", ("The consultant for the {E} was Dr. {value}.", "Dr. {value} led {P}'s care for the {E}."),
      ("Which consultant treated {P}'s {E}?",),
      ("Who led {P}'s care for {E}?", "Name the consultant responsible for the {E}.")),
    A("drug", ("For the {E}, {P} was started on {value}.", "{value} was prescribed to treat the {E}."),
      ("Which drug was started for {P}'s {E}?",),
      ("What medicine was prescribed for {E}?", "{P} received which drug for the {E}?")),
    A("lab", ("{P}'s {analyte} was {value} {lab_unit} during the {E} admission.",
              "With the {E}, {P}'s {analyte} measured {value} {lab_unit}."),
      ("What was {P}'s {analyte}, in {lab_unit}, during the {E} admission?",),
      ("Which {analyte} value, in {lab_unit}, was measured with the {E}?",
       "How high was {P}'s {analyte} with {E}, in {lab_unit}?")),
)
del A


# ---------------------------------------------------------------- fact bases
class Pools:
    """Draws values without replacement, per pool, for one document."""

    def __init__(self, rng: random.Random):
        self.rng, self._left = rng, {}

    def take(self, name: str, pool: tuple):
        left = self._left.setdefault(name, self.rng.sample(pool, len(pool)))
        return left.pop()

    def person(self, title: str = "") -> tuple[str, str, bool]:
        """(full name, first name, female) with first name and surname unique in the document."""
        female = self.rng.random() < 0.5
        first = self.take("female" if female else "male", FEMALE if female else MALE)
        return f"{title}{first} {self.take('surname', SURNAMES)}", first, female


def _years(rng: random.Random, n: int, lo: int, hi: int) -> list[str]:
    return [str(y) for y in rng.sample(range(lo, hi), n)]


def narrative_fact_base(rng: random.Random) -> tuple[dict, list[list[Fact]]]:
    """A village and seven residents with six facts each: (document slots, facts per resident)."""
    pools = Pools(rng)
    village = pools.take("town", TOWNS)
    years = iter(_years(rng, 7, 1701, 1889))
    values = {"birthplace": lambda: pools.take("town", TOWNS), "trade": lambda: pools.take("trade", TRADES),
              "street": lambda: pools.take("street", STREETS), "pet": lambda: pools.take("pet", PET_NAMES),
              "arrival": lambda: next(years), "spouse": lambda: pools.person()[0],
              "ship": lambda: pools.take("ship", SHIPS), "island": lambda: pools.take("island", ISLANDS),
              "book": lambda: pools.take("book", BOOKS), "award": lambda: pools.take("award", AWARDS),
              "society": lambda: pools.take("society", SOCIETIES),
              "instrument": lambda: pools.take("instrument", INSTRUMENTS),
              "dish": lambda: pools.take("dish", DISHES)}
    residents = []
    uses = {a.name: 0 for a in NARRATIVE_ATTRIBUTES}
    for i in range(7):
        name, first, female = pools.person()
        # Each attribute serves at most 7 residents (its smallest pools hold 8 values).
        options = [a for a in NARRATIVE_ATTRIBUTES if uses[a.name] < 7]
        facts = []
        for attr in rng.sample(options, 6):
            uses[attr.name] += 1
            slots = (("E", name), ("first", first), ("village", village), ("animal", rng.choice(ANIMALS)))
            facts.append(Fact(f"r{i}.{attr.name}", attr, values[attr.name](), slots))
        residents.append(facts)
    return {"village": village}, residents



def _lab(rng: random.Random, analyte: tuple) -> tuple[str, str]:
    _, unit, lo, hi, decimals = analyte
    scale = 10 ** decimals
    return f"{rng.randint(round(lo * scale), round(hi * scale)) / scale:.{decimals}f}", unit


def health_fact_base(rng: random.Random) -> tuple[dict, list[list[Fact]]]:
    """A patient (five facts) and seven episodes, each named by its diagnosis (five facts each)."""
    pools = Pools(rng)
    name, _, female = pools.person()
    patient = ("Ms. " if female else "Mr. ") + name.split()[-1]
    pos = "she" if female else "he"
    p_slots = (("E", patient), ("E_pos", pos))
    patient_values = {"home_town": pools.take("town", TOWNS), "occupation": pools.take("job", JOBS),
                      "gp": pools.person()[0], "allergy": pools.take("drug", DRUGS),
                      "reaction": pools.take("reaction", REACTIONS)}
    patient_facts = [Fact(f"p.{a.name}", a, patient_values[a.name], p_slots) for a in HEALTH_PATIENT_ATTRIBUTES]
    years = sorted(rng.sample(range(2004, 2024), 7))
    numbers: set[str] = {str(y) for y in years}  # every numeric answer distinct, so each occurs once

    def distinct(draw: Callable[[], tuple[str, str]]) -> tuple[str, str]:
        while True:
            value, unit = draw()
            if value not in numbers:
                numbers.add(value)
                return value, unit

    episodes = []
    for i, year in enumerate(years):
        dx = pools.take("disease", DISEASES)
        analyte = pools.take("analyte", ANALYTES)
        lab, lab_unit = distinct(lambda: _lab(rng, analyte))
        values = {"town": pools.take("town", TOWNS), "year": str(year), "clinician": pools.person()[0],
                  "drug": pools.take("drug", DRUGS), "lab": lab}
        slots = (("E", dx), ("P", patient), ("analyte", analyte[0]), ("lab_unit", lab_unit),
                 ("month", rng.choice(MONTHS)))
        episodes.append([Fact(f"e{i}.{a.name}", a, values[a.name], slots) for a in HEALTH_EPISODE_ATTRIBUTES])
    return {"patient": patient, "name": name, "pos": pos}, [patient_facts] + episodes


# ---------------------------------------------------------------- prose
NARRATIVE_FILLERS = (
    "The winters in {village} were long, and the road to the coast was often closed for weeks.",
    "On market days the square filled with carts, and nobody could cross it in under an hour.",
    "The old mill by the river had stopped turning long before any of this began.",
    "Letters from those years are few, and most of them concern unpaid bills.",
    "The parish records of {village} are patchy, and some pages were lost to damp.",
    "Every autumn the village repainted the bridge railings, always in the same shade of green.",
    "There were lean years too, when the harvest failed and few people could pay their debts.",
    "The inn on the square served as post office, courtroom and dance hall in turn.",
    "Children were sent to fetch water from the spring below the churchyard.",
    "A great storm one March took the roof off the schoolhouse and half the chimneys with it.",
    "Travellers passing through often stayed longer than they had meant to.",
    "The village council met on the first Monday of every month and rarely agreed on anything.",
    "Nobody in {village} trusted the bank in the county town.",
    "In summer the meadows by the river were full of hay-makers from dawn until dusk.",
    "Quarrels were common but seldom lasted beyond the end of the week.",
    "The road between {village} and the county town was notorious for highwaymen in those years.",
    "A travelling fair came every September and left behind a trail of broken promises.",
    "The church bell was cracked, and its sound carried oddly across the marsh.",
    "Most evenings ended with a walk along the old towpath.",
    "Newcomers were watched with suspicion for a year or two and then treated like family.",
    "The schoolmaster kept a register of every child, though he spelled half the names wrongly.",
    "Floods came every few springs, and the lower lanes smelled of river mud for weeks afterwards.",
    "Most houses had a vegetable plot behind them and a bench beside the door.",
    "Gossip travelled faster than the post, and it was usually more accurate.",
    "The harvest supper in the tithe barn was the one night of the year when everyone sat together.",
    "Candles were expensive, so most of the village went to bed with the sun in winter.",
    "A surveyor from the county once spent a month measuring the common and then was never seen again.",
    "The churchyard wall was rebuilt three times in living memory, each time a little crookeder.",
    "Peddlers brought needles, ribbons and news from the towns along the coast.",
    "On feast days the band played in the square until the constable sent everyone home.",
    "Wolves had not been seen for a generation, but people still barred their doors at night.",
    "The well in the square froze solid in the hardest winters.",
    "There was talk for years of building a railway, but it never came.",
    "The doctor from the next valley came once a fortnight, weather permitting.",
    "Sheep grazed on the common, and nobody could agree whose sheep they were.",
    "The blacksmith's hammer could be heard from one end of the high street to the other.",
    "A carrier's cart went to the county town on Tuesdays and came back on Thursdays.",
    "Weddings were held in the spring, when the lanes were dry enough for a procession.",
    "The reading room above the inn had eleven books and one very old newspaper.",
    "In dry summers the river shrank to a trickle and the children caught eels by hand.",
    "Fog rolled in from the marsh most autumn mornings and lifted only at noon.",
    "The village had two churches and one bell-ringer, who served both.",
)
RESIDENT_COLOUR = (  # about a resident, but nothing askable
    "{first} rose before dawn most days and rarely went to bed before the lamps in the square were put out.",
    "{first} was known for a dry sense of humour and a habit of humming while working.",
    "Neighbours said that {first} had more patience than anyone else in the district.",
    "{first} kept a notebook of small observations: the weather, the price of flour, the names of travellers.",
    "In later accounts, {first} is described as tall, untidy and unfailingly polite.",
    "{first} never learned to swim, and mentioned the fact with some pride.",
    "{first} distrusted banks and kept every account in a ledger bound with string.",
    "Nobody remembers {first} ever taking a holiday.",
    "{first} read whatever books came to hand, from almanacs to old sermons.",
    "Apprentices found {first} strict but fair.",
    "{first} quarrelled often with the neighbours but always made peace before Sunday.",
    "On market days {first} would stand in the doorway counting the carts.",
    "{first} liked to say that a village is only as good as its gossip.",
    "Some of the letters {first} wrote in those years still survive.",
)
HEALTH_FILLERS = (
    "Observations were stable throughout, and the patient slept well.",
    "A pharmacist reconciled the medication list on the first day.",
    "Blood cultures taken on arrival showed no growth.",
    "An electrocardiogram showed sinus rhythm.",
    "Pain was well controlled with regular simple analgesia.",
    "Thromboprophylaxis was given according to the ward protocol.",
    "The case was discussed at the weekly multidisciplinary meeting.",
    "Fluid balance was monitored closely for the first forty-eight hours.",
    "The dietitian suggested small, frequent meals.",
    "Physiotherapy assessed mobility and recommended a walking frame for longer distances.",
    "The patient remained alert and oriented throughout the stay.",
    "There were no falls or pressure injuries during the admission.",
    "A chest radiograph showed no acute changes.",
    "Urinalysis was unremarkable apart from a trace of protein.",
    "The findings were explained in plain language, and the patient agreed with the plan.",
    "Follow-up was arranged in the outpatient clinic.",
    "Temperature charts showed a single low-grade spike that was not repeated.",
    "The nursing team noted that the patient was eating and drinking normally.",
    "Oxygen saturations remained above ninety-four per cent on room air.",
    "Intravenous fluids were stopped once oral intake improved.",
    "The occupational therapist reviewed the home situation and raised no concerns.",
    "A repeat set of bloods was taken before discharge.",
    "The patient was given written information about warning signs.",
    "Bowel function was normal throughout the stay.",
    "Capillary glucose readings were within the target range.",
    "The ward round documented steady improvement each day.",
    "A social worker confirmed that support at home was adequate.",
    "Skin integrity was checked twice daily and remained intact.",
    "The patient mobilised independently by the third day.",
    "An abdominal ultrasound was reported as normal.",
    "Antiemetics were available but not required.",
    "The medication chart was reviewed by the senior pharmacist.",
    "A discharge letter was sent to the family doctor the same day.",
    "Sleep was disturbed on the first night by noise on the ward.",
    "Hand hygiene and isolation precautions were observed as a precaution.",
    "The patient asked detailed questions about the diagnosis, which were answered.",
    "Visiting hours were relaxed so that family could stay longer.",
    "A urinary catheter was not needed.",
    "The patient declined a sleeping tablet on the second night.",
    "Daily weights were recorded and showed no significant change.",
    "Inflammatory markers settled over the course of the stay.",
    "A falls risk assessment was completed on admission.",
    "Nutrition screening showed a low risk of malnutrition.",
    "The patient was encouraged to sit out of bed for meals.",
    "Medical students took a history with the patient's consent.",
    "No new allergies were recorded during this admission.",
    "The patient's own medicines were checked and returned at discharge.",
    "Transport home was arranged by the ward clerk.",
    "The patient was reviewed by the consultant on the morning ward round.",
    "Pressure areas were inspected daily and remained healthy.",
    "The patient's mood was noted to be good throughout the stay.",
    "Blood pressure was monitored four-hourly and stayed within normal limits.",
    "No further investigations were felt to be necessary.",
    "The patient's family were kept informed with the patient's agreement.",
    "A leaflet about the condition was provided and discussed.",
    "The patient was able to manage personal care independently.",
    "Heart sounds were normal and the chest was clear on examination.",
    "The patient tolerated a normal diet from the second day.",
    "An interpreter was not required.",
    "The drug chart was rewritten before discharge.",
)
ORDINALS = ("First", "Second", "Third", "Fourth", "Fifth", "Sixth", "Seventh")  # words: digits could clash with answers
LETTER_OPENINGS = (
    "This letter summarises the admission of {P} with {E}.",
    "Dear colleague, we write to update you on {P}, who was recently treated for {E}.",
    "Please find below a summary of {P}'s recent stay with {E}.",
    "Thank you for your continued involvement in the care of {P}, who was seen with {E}.",
)
LETTER_CLOSINGS = (
    "With kind regards from the admitting team.",
    "Please do not hesitate to contact the ward with any questions.",
    "We would be grateful if you could review the patient in the surgery in a few weeks.",
    "A copy of this letter has been sent to the patient.",
)


def _with_fillers(rng: random.Random, sentences: list[str], fillers: list[str], n: int) -> list[str]:
    """Insert ``n`` filler sentences at random places after the paragraph's first sentence."""
    out = list(sentences)
    for _ in range(n):
        if not fillers:
            break
        out.insert(rng.randint(1, len(out)), fillers.pop())
    return out


def narrative_text(rng: random.Random, slots: dict, residents: list[list[Fact]], n_fill: int) -> str:
    """A short introduction, then one section per resident, headed by the name, with all six facts."""
    fillers = [f.format(**slots) for f in rng.sample(NARRATIVE_FILLERS, len(NARRATIVE_FILLERS))]
    colours = rng.sample(RESIDENT_COLOUR, len(RESIDENT_COLOUR))
    per_para = [n_fill // len(residents) + (1 if i < n_fill % len(residents) else 0) for i in range(len(residents))]
    paragraphs = [f"The Chronicle of {slots['village']}",
                  f"This chronicle records the lives of seven people who made their homes in {slots['village']}."]
    for i, facts in enumerate(residents):
        paragraphs.append(dict(facts[0].slots)["E"])
        sentences = [f.fill(rng.choice(f.attribute.prose)) for f in facts]
        first = dict(facts[0].slots)["first"]
        for colour in (colours.pop(), colours.pop()):
            sentences.insert(rng.randint(1, len(sentences)), colour.format(first=first))
        paragraphs.append(" ".join(_with_fillers(rng, sentences, fillers, per_para[i])))
    return "\n\n".join(paragraphs)


def health_text(rng: random.Random, slots: dict, sections: list[list[Fact]], n_fill: int) -> str:
    """A patient summary, then one clinic letter per episode in date order."""
    fillers = rng.sample(HEALTH_FILLERS, len(HEALTH_FILLERS))
    patient, *episodes = sections
    per_para = [n_fill // len(episodes) + (1 if i < n_fill % len(episodes) else 0) for i in range(len(episodes))]
    intro = [f"Case file of {slots['name']} ({slots['patient']})", "Patient summary"]
    intro.append(" ".join(f.fill(rng.choice(f.attribute.prose)) for f in patient))
    paragraphs = intro
    for k, facts in enumerate(episodes, 1):
        paragraphs.append(f"{ORDINALS[k - 1]} letter: {dict(facts[0].slots)['E']}")
        sentences = [f.fill(rng.choice(f.attribute.prose)) for f in facts]
        opening, closing = rng.choice(LETTER_OPENINGS), rng.choice(LETTER_CLOSINGS)
        body = _with_fillers(rng, sentences, fillers, per_para[k - 1])
        paragraphs.append(" ".join([facts[0].fill(opening)] + body + [closing]))
    return "\n\n".join(paragraphs)


# ---------------------------------------------------------------- training QA and evaluation questions
def make_train_qa(facts: list[Fact], seed: int) -> list[dict]:
    """Training QA pairs from a document's fact base: the only input besides a seed.

    Covers a seeded ``COVER_FRACTION`` of the facts, with one or two questions each, worded
    with the attribute's training templates (never the evaluation ones). It receives no
    evaluation question, so nothing about the test set can reach the adapter through it.
    """
    rng = random.Random(seed)
    covered = rng.sample(facts, round(COVER_FRACTION * len(facts)))
    pairs = [{"question": f.fill(q), "answer": f.answer}
             for f in covered for q in rng.sample(f.attribute.train_qs, rng.randint(1, 2))]
    rng.shuffle(pairs)
    return pairs


def phrase(answer: str) -> re.Pattern:
    """``answer`` as a whole phrase, lowercase: "16" matches none of "16/L", "3.16" and "16.5"."""
    return re.compile(rf"(?<![\w/.]){re.escape(answer.lower())}(?![\w/]|\.\d)")


def mentions(texts: list[str], answer: str) -> bool:
    """Whether ``answer`` occurs as a whole phrase in any of ``texts`` (case-insensitive)."""
    pattern = phrase(answer)
    return any(pattern.search(t.lower()) for t in texts)


def stratify(facts: list[Fact], train_qa: list[dict]) -> tuple[list[Fact], list[Fact]]:
    """(covered, uncovered): covered facts are the subject of a pair (its answer is the fact's);
    uncovered facts' answers appear in no train_qa question or answer. Facts in neither
    (an answer mentioned inside another pair's question) are never asked."""
    train_answers = {p["answer"] for p in train_qa}
    train_texts = [p["question"] for p in train_qa] + [p["answer"] for p in train_qa]
    covered = [f for f in facts if f.answer in train_answers]
    uncovered = [f for f in facts
                 if f.answer not in train_answers and not any(mentions(train_texts, a) for a in f.answers)]
    return covered, uncovered


def eval_questions(rng: random.Random, facts: list[Fact], train_qa: list[dict], doc_id: str,
                   counts: tuple[int, int] = (N_COVERED, N_UNCOVERED)) -> list[dict]:
    """``counts`` = (covered, uncovered) questions, drawn without replacement, in document order."""
    covered, uncovered = stratify(facts, train_qa)
    if counts[0] > len(covered) or counts[1] > len(uncovered):
        raise ValueError(f"{doc_id}: {counts[0]} covered and {counts[1]} uncovered questions asked, the document "
                         f"has {len(covered)} covered and {len(uncovered)} uncovered facts")
    picked = [(f, "covered") for f in rng.sample(covered, counts[0])] + \
             [(f, "uncovered") for f in rng.sample(uncovered, counts[1])]
    order = {f.fact_id: i for i, f in enumerate(facts)}
    picked.sort(key=lambda ft: order[ft[0].fact_id])  # document order
    return [{"id": f"{doc_id}-q{j}", "question": f.fill(rng.choice(f.attribute.eval_qs)), "answers": f.answers,
             "tags": [tag]} for j, (f, tag) in enumerate(picked)]


# ---------------------------------------------------------------- datasets and documents
@dataclass(frozen=True)
class DatasetSpec:
    name: str
    prefix: str
    seed: int
    fact_base: Callable[[random.Random], tuple[dict, list[list[Fact]]]]
    text: Callable[[random.Random, dict, list[list[Fact]], int], str]
    fillers: tuple[int, int]  # filler sentences per document


DATASETS = (
    DatasetSpec("mini-narrative", "narr", 4171, narrative_fact_base, narrative_text, (38, 42)),
    DatasetSpec("mini-health", "health", 8293, health_fact_base, health_text, (52, 58)),
)


def validate(doc: dict, facts: list[Fact]) -> None:
    """Raise ValueError if a generated document breaks the dataset's invariants."""
    text, words = doc["text"], len(doc["text"].split())
    problems = [] if WORD_RANGE[0] <= words <= WORD_RANGE[1] else [f"{words} words"]
    if len(facts) < MIN_FACTS:
        problems.append(f"{len(facts)} facts")
    for f in facts:
        n = len(phrase(f.answer).findall(text.lower()))
        if n != 1:
            problems.append(f"answer {f.answer!r} occurs {n} times in the text")
    train_qs = {p["question"] for p in doc["train_qa"]}
    uncovered_answers = [a for q in doc["questions"] if q["tags"] == ["uncovered"] for a in q["answers"]]
    for q in doc["questions"]:
        if q["question"] in train_qs:
            problems.append(f"evaluation question reused in train_qa: {q['question']}")
    train_texts = [t for p in doc["train_qa"] for t in (p["question"], p["answer"])]
    problems += [f"uncovered answer {a!r} in train_qa" for a in uncovered_answers if mentions(train_texts, a)]
    if problems:
        raise ValueError(f"{doc['doc_id']}: " + "; ".join(problems))


def build_document(spec: DatasetSpec, doc_id: str, seed: int,
                   counts: tuple[int, int] = (N_COVERED, N_UNCOVERED)) -> dict:
    """One document; its text and ``train_qa`` are drawn before the questions, so ``counts`` changes
    only the questions."""
    rng = random.Random(seed)
    slots, sections = spec.fact_base(rng)
    facts = [f for section in sections for f in section]
    text = spec.text(rng, slots, sections, rng.randint(*spec.fillers))
    train_qa = make_train_qa(facts, seed=rng.randrange(2**31))
    doc = {"doc_id": doc_id, "text": text, "questions": eval_questions(rng, facts, train_qa, doc_id, counts),
           "train_qa": train_qa}
    validate(doc, facts)
    return doc


def build_split(spec: DatasetSpec, split: str, n_docs: int, offset: int,
                counts: tuple[int, int] = (N_COVERED, N_UNCOVERED)) -> list:
    return [build_document(spec, f"{spec.prefix}-{split}-{i:02d}", spec.seed * 1000 + offset + i, counts)
            for i in range(n_docs)]


def write_all(out_dir: Path, counts: tuple[int, int] = (N_COVERED, N_UNCOVERED)) -> list:
    """Generate every dataset split into `out_dir`; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in DATASETS:
        for split, n_docs, offset in SPLITS:
            path = out_dir / f"{spec.name}.{split}.jsonl"
            lines = [json.dumps(doc, ensure_ascii=False) for doc in build_split(spec, split, n_docs, offset, counts)]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
            paths.append(path)
    return paths


def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    parser.add_argument("--questions", type=int, nargs=2, default=(N_COVERED, N_UNCOVERED),
                        metavar=("COVERED", "UNCOVERED"), help="evaluation questions per document, by stratum")
    args = parser.parse_args(argv)
    for path in write_all(args.out, tuple(args.questions)):
        print(path)


if __name__ == "__main__":
    main()
