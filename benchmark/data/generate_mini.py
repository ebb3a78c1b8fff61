"""Deterministic generator of the two small fictional QA datasets bundled with lorakv-bench.

``mini-narrative`` mirrors NarrativeQA (short life stories of invented craftspeople) and
``mini-health`` mirrors LongHealth (discharge summaries of invented patients).  Every name,
town, drug, disease, lab analyte and number is made up, so a language model cannot answer
the questions without reading the document.

Design
------
* A *slot* dict holds one document's invented values (``slots["shop_town"] == "Quellstad"``).
  Values are drawn without replacement, so no two facts in a document share an answer.
* A :class:`Fact` is one fact kind: several prose templates (one is picked per document)
  and one or more :class:`Ask` records.  An ``Ask`` names the slot holding the answer and
  carries two disjoint question-template sets: ``eval_qs`` for the held-out evaluation
  questions and ``train_qs`` for the paraphrased ``train_qa`` pairs (which stand in for the
  paper's model-synthesised QA).  Every prose template contains every asked slot, so each
  answer appears verbatim in the text.
* A document = required facts + a random subset of optional facts, laid out in paragraphs
  (health: titled sections), then padded with filler sentences up to a random word target.
  Several facts share a type (towns, years, dates, doses, clinicians), so each document
  contains distractors: the sister's town next to the shop's town, a home medication next
  to the new one, an admission lab value next to a repeat value.
* 8 evaluation questions are sampled from the document's asks; ``train_qa`` covers every
  ask (including the distractor facts) with 2-3 paraphrases each.
* Each document has its own ``random.Random(seed)`` with an integer seed; only lists and
  tuples are iterated, so output is byte-identical across runs and Python versions.

Run ``python -m benchmark.data.generate_mini [--out DIR]`` (default: ``benchmark/data/mini``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

DEFAULT_OUT = Path(__file__).resolve().parent / "mini"
SPLITS = (("test", 8, 0), ("dev", 3, 500))  # (split, number of documents, seed offset)
N_EVAL_QUESTIONS = 8
WORD_RANGE = (300, 650)  # hard bounds on words per document
ASKS_PER_DOC = (14, 18)  # askable facts per document (train_qa covers all of them)
TRAIN_RANGE = (20, 36)  # train_qa pairs per document

# ---------------------------------------------------------------- name pools (all invented)
# Pools whose items follow "a " in templates start with a consonant.
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
         "Grimsetter", "Hollin Bay", "Ivelmouth", "Jessop's Landing", "Orrisby", "Tamsmoor")
STREETS = ("Tallow Lane", "Quince Street", "Gannet Row", "Marrow Street", "Coppice Lane",
           "Wicket Row", "Sorrel Street", "Ferrier's Walk", "Lantern Row", "Bellwether Lane",
           "Pumpkin Yard", "Hatchment Street", "Cobble Steps", "Mercer's Alley")
# narrative
TRADES = (("baker", "bakery"), ("clockmaker", "clock workshop"), ("bookbinder", "bindery"),
          ("glassblower", "glass workshop"), ("candlemaker", "chandlery"), ("saddler", "saddlery"),
          ("hatter", "hat shop"), ("printer", "print shop"), ("cooper", "cooperage"),
          ("mapmaker", "map shop"), ("herbalist", "herb shop"), ("lute maker", "lute workshop"))
SPOUSE_TRADES = ("ferry pilot", "schoolteacher", "surveyor", "weaver", "lock keeper",
                 "stonemason", "beekeeper", "tanner", "fiddler", "net mender", "dyer", "bargee")
ANIMALS = ("mule", "goose", "ferret", "raven", "goat", "greyhound", "tortoise", "jackdaw",
           "pony", "lurcher")
PET_COLOURS = ("grey", "piebald", "mud-coloured", "speckled", "black", "lame", "sandy", "brindled")
PET_NAMES = ("Bramblewick", "Tansy", "Quillet", "Mossfoot", "Pilchard", "Grettle", "Fennick",
             "Sorrowful", "Nutmeg", "Wobble", "Captain Crumb", "Parsnip", "Thimble", "Dusk")
SHIPS = ("Marigold Wren", "Patient Heron", "Saltwhistle", "Margery Bell", "Dauntless Plover",
         "Seventh Lantern", "Quiet Thimble", "Copper Gannet", "Brisk Ermine", "Widow Tansy")
ISLANDS = ("Skarra", "Venmoor", "Quiddon", "Tallowholm", "Orkessay", "Brannock", "Dunskerry",
           "Maelholm", "Grisby Holm", "Little Farrow")
BOOKS = ("Salt on the Sill", "The Lantern Ledger", "Small Bells in Winter", "A Quiet Reckoning",
         "Notes from the Kiln", "The Patient Thimble", "Crumbs and Compasses", "Rooks Over Water",
         "Letters to a Cooper", "The Tallow Almanac", "Seven Crooked Chimneys")
BOOK_TOPICS = ("the weather of the northern coast", "the habits of rooks", "old weights and measures",
               "bread made without yeast", "the rivers of the lowlands", "village quarrels",
               "the care of tools", "ghost stories told by carters")
AWARDS = ("Copper Thistle Medal", "Grey Heron Ribbon", "Quillfeather Prize", "Silver Wheel",
          "Order of the Lark", "Brassmoor Cup", "Lantern Medal", "Bellwether Shield")
SOCIETIES = ("Guild of Lowland Artisans", "Amberlane Civic Society", "Brotherhood of the Lantern",
             "Society of Patient Hands", "Fellowship of the Bell", "Company of Tinkers",
             "Kestrel Debating Club", "Order of Quiet Makers")
COINS = ("silver rennets", "brass tallies", "copper dalders", "river marks", "tin quarrels")
# health
HOSPITAL_KINDS = ("General Hospital", "Infirmary", "Cottage Hospital", "Memorial Hospital")
WARDS = ("Larkspur Ward", "Hesketh Ward", "Ombrel Ward", "Ward 11B", "Ward 7C", "Tamarisk Ward",
         "Fennimore Ward", "Ward 4D", "Corley Ward", "Ward 13A", "Juniper Ward", "Bassett Ward")
DRUGS = ("Velatrixin", "Oxaprenol", "Dravocilin", "Menthazide", "Quorvatan", "Zelbrumide",
         "Tirasolone", "Fendaprax", "Corvimab", "Lunestrol", "Pexotrine", "Hallodrone", "Sarvanib",
         "Brixolate", "Tenevril", "Ombrazine", "Kaltemide", "Virexapam", "Nortaclin", "Ulvaprine")
DISEASES = ("Marrowell syndrome", "ochric nephritis", "Tessaly fever", "lamellar hepatopathy",
            "Brenner-Quist myositis", "granular pleural fibrosis", "Vosker anaemia",
            "episodic tarsal neuritis", "Kallendar disease", "Pellow-Drake syndrome",
            "reticular bile stasis", "Oster arteritis", "Halvard cardiomyopathy", "Corran fever")
SYMPTOMS = ("episodic tongue numbness", "drenching afternoon sweats", "painless ankle swelling",
            "intermittent double vision", "a bitter metallic taste", "recurrent wrist tremor",
            "persistent hiccups", "patchy scalp tingling", "night-time calf cramps",
            "greyish skin mottling", "sudden loss of smell")
REACTIONS = ("a blistering palm rash", "swelling of the eyelids", "violet wheals",
             "severe hiccups", "transient deafness", "a burning scalp", "yellow-tinged vision")
ANALYTES = (("serum trevinase", "U/L", 12, 140, 0), ("plasma orvalin", "ng/mL", 1.5, 40.0, 1),
            ("urinary celestrin", "mg/L", 0.2, 9.0, 2), ("serum kalvate", "mmol/L", 2.0, 14.0, 1),
            ("Hessler factor", "IU/mL", 20, 400, 0), ("blood quellan", "g/L", 3.0, 28.0, 1),
            ("serum ambrine", "umol/L", 40, 300, 0), ("plasma dorsin", "pg/mL", 5, 95, 0))
PROCEDURES = ("Harlan-Voss shunt insertion", "percutaneous marrow lavage",
              "transhepatic coil placement", "left pleural rinse", "Pennock nerve block",
              "retrograde bile sweep", "tarsal sheath release", "Kemble drain insertion")
CLINIC_KINDS = ("Outpatient Clinic", "Day Unit", "Follow-up Clinic", "Metabolic Clinic")
JOBS = ("ferry pilot", "lock keeper", "peat cutter", "piano tuner", "saddler", "net mender",
        "bell founder", "tram conductor", "kiln worker", "harbour clerk")
FREQUENCIES = ("once daily", "twice daily", "every eight hours", "at night",
               "three times a week", "every other morning")
RELATIVES = {True: ("daughter", "sister", "niece", "wife"), False: ("son", "brother", "nephew", "husband")}
MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August",
          "September", "October", "November", "December")


# ---------------------------------------------------------------- fact kinds
@dataclass(frozen=True)
class Ask:
    """One askable fact: the answer slot, disjoint eval and train question templates, and
    optionally a slot holding a second gold answer (e.g. a first name without the surname)."""

    slot: str
    eval_qs: tuple[str, ...]
    train_qs: tuple[str, ...]
    alt: str | None = None


@dataclass(frozen=True)
class Fact:
    """One fact kind: prose templates (each contains every asked slot) and the asks it supports."""

    name: str
    prose: tuple[str, ...]
    asks: tuple[Ask, ...]
    section: str = ""  # health documents group facts under section titles


NARRATIVE_FACTS = (
    Fact("birth", (
        "{P} was born in {birth_town} in {birth_year}, the second of four children.",
        "{P} was born in the town of {birth_town} in {birth_year}.",
        "Born in {birth_town} in the spring of {birth_year}, {P} grew up above a carter's yard.",
        "The parish book of {birth_town} records the birth of {P} in {birth_year}.",
        "{P} came into the world in {birth_town} in {birth_year}, during a winter the old people still talked about.",
    ), (
        Ask("birth_town", ("In which town was {P} born?", "What town was {P} born in?"),
            ("Where was {P} born?", "What is the birthplace of {P}?", "{P} was born in which town?")),
        Ask("birth_year", ("In what year was {P} born?", "What year was {P} born in?"),
            ("When was {P} born?", "{P} was born in which year?", "What is {P}'s year of birth?")),
    )),
    Fact("sibling", (
        "{P_first}'s {sibrel}, {sib}, left home early and settled in {sib_town}.",
        "{P_first} had a {sibrel} named {sib}, who moved away to {sib_town} and rarely came back.",
        "Of the whole family, only {P_first}'s {sibrel} {sib} wrote regularly, always from {sib_town}, where {sib_sub} had settled.",
        "{sib}, the {sibrel} of {P_first}, moved to {sib_town} as a young adult and stayed there for the rest of {sib_pos} life.",
    ), (
        Ask("sib", ("What was the name of {P}'s {sibrel}?", "Who was {P}'s {sibrel}?"),
            ("Name the {sibrel} of {P}.", "{P} had a {sibrel} called what?", "What was {P}'s {sibrel} called?"), alt="sib_first"),
        Ask("sib_town", ("In which town did {P}'s {sibrel} settle?", "Where did {P}'s {sibrel} settle?"),
            ("To which town did {sib} move?", "{sib} made a home in which town?",
             "Where did the {sibrel} of {P} end up living?")),
    )),
    Fact("apprentice", (
        "At the age of {appr_age}, {P_first} was apprenticed to {mentor}, a {trade} in {appr_town}.",
        "When {sub} was {appr_age}, {P_first} went to {appr_town} to learn the trade of a {trade} under {mentor}.",
        "{mentor}, an exacting {trade} in {appr_town}, took {P_first} on as an apprentice at the age of {appr_age}.",
        "{P_first} learned the craft in {appr_town}, where {mentor} accepted {obj} as an apprentice at {appr_age}.",
    ), (
        Ask("mentor", ("To whom was {P} apprenticed?", "Who trained {P} as an apprentice?"),
            ("Under which master did {P} learn the trade?", "Who was {P}'s teacher during the apprenticeship?",
             "Name the {trade} who took {P} on as an apprentice."), alt="mentor_last"),
        Ask("appr_town", ("In which town did {P} serve {pos} apprenticeship?",
             "Where did {P} serve {pos} apprenticeship?"),
            ("Where did {P} train as an apprentice?", "{P} learned the trade in which town?",
             "In what town was {P} an apprentice?")),
    )),
    Fact("pet", (
        "{P_first} kept a {pet_colour} {animal} named {pet}, which followed {obj} everywhere.",
        "A {pet_colour} {animal} called {pet} lived in {P_first}'s back room, and visitors learned to step around it.",
        "Everyone in the street knew {P_first}'s {pet_colour} {animal}, {pet}, and its terrible temper.",
    ), (
        Ask("pet", ("What was the name of {P}'s {animal}?", "What was {P}'s {animal} called?"),
            ("What did {P} call {pos} {animal}?", "The {animal} kept by {P} had what name?",
             "Give the name of the {animal} that belonged to {P}.")),
    )),
    Fact("shop", (
        "In {shop_year}, {P_first} opened a {shop} on {street} in {shop_town}.",
        "{P_first} opened {pos} own {shop} in {shop_town} in {shop_year}; it stood on {street}, near the old well.",
        "It was not until {shop_year} that {P_first} could afford a {shop} of {pos} own, a cramped room on {street} in {shop_town}.",
        "The {shop} that {P_first} opened on {street} in {shop_town} in {shop_year} was small but never empty.",
    ), (
        Ask("shop_town", ("In which town did {P} open {pos} {shop}?", "Where did {P} open {pos} {shop}?"),
            ("{P}'s {shop} was in which town?", "In what town did {P} run a {shop}?",
             "Which town was home to the {shop} of {P}?")),
        Ask("shop_year", ("In what year did {P} open {pos} {shop}?", "When did {P} open the {shop}?"),
            ("What year did the {shop} of {P} open?", "{P} opened a {shop} in which year?",
             "In which year did {P}'s {shop} first open?")),
        Ask("street", ("On which street was {P}'s {shop}?", "What street was {P}'s {shop} on?"),
            ("The {shop} run by {P} stood on which street?", "On what street did {P} keep {pos} {shop}?",
             "Which street housed {P}'s {shop}?")),
    )),
    Fact("rival", (
        "{P_first}'s great rival was {rival}, who ran a competing {shop} in {rival_town}.",
        "Not everyone welcomed {P_first}'s success: {rival}, a {trade} from {rival_town}, spoke against {obj} at every guild meeting.",
        "{rival} of {rival_town}, also a {trade}, became {P_first}'s fiercest competitor.",
    ), (
        Ask("rival", ("Who was {P}'s chief rival?", "Who was {P}'s main competitor?"),
            ("Name the rival of {P}.", "Which competitor opposed {P}?", "{P}'s fiercest competitor was whom?"), alt="rival_last"),
        Ask("rival_town", ("In which town did {P}'s rival work?", "Where was {P}'s rival based?"),
            ("Which town was {rival} from?", "{P}'s competitor came from which town?",
             "Where did {rival} practise the trade?")),
    )),
    Fact("marriage", (
        "In {wed_year}, {P_first} married {spouse}, a {spouse_trade} from {spouse_town}.",
        "{P_first} met {spouse}, a {spouse_trade} visiting from {spouse_town}, and the two were married in {wed_year}.",
        "{spouse} of {spouse_town}, a {spouse_trade} by trade, became {P_first}'s {spouse_rel} in {wed_year}.",
        "The wedding of {P_first} and {spouse}, a {spouse_trade} from {spouse_town}, took place in {wed_year}.",
    ), (
        Ask("spouse", ("Whom did {P} marry?", "Who did {P} marry?"),
            ("What was the name of {P}'s {spouse_rel}?", "Who became {P}'s {spouse_rel}?",
             "{P} was married to whom?"), alt="spouse_first"),
        Ask("wed_year", ("In what year did {P} marry?", "When did {P} get married?"),
            ("What year was {P}'s wedding?", "{P} married in which year?", "In which year did {P} wed {spouse}?")),
        Ask("spouse_town", ("Which town did {P}'s {spouse_rel} come from?", "Where was {P}'s {spouse_rel} from?"),
            ("From what town did {spouse} come?", "{spouse} was a native of which town?",
             "What was the home town of {P}'s {spouse_rel}?")),
    )),
    Fact("voyage", (
        "In {voyage_year}, {P_first} sailed aboard the {ship} to the island of {island}.",
        "{P_first} once crossed to {island} on a cargo ship called the {ship}, a journey {sub} never forgot.",
        "The only long journey of {P_first}'s life was a passage to {island} aboard the {ship} in {voyage_year}.",
    ), (
        Ask("ship", ("What was the name of the ship {P} sailed on?", "On which ship did {P} sail?"),
            ("Aboard what vessel did {P} travel by sea?", "Which ship carried {P} across the water?",
             "{P} made a sea voyage on which ship?")),
        Ask("island", ("To which island did {P} sail?", "Which island did {P} travel to by sea?"),
            ("What island did {P} visit by ship?", "Where did {P}'s sea voyage lead?",
             "{P} once crossed the sea to which island?")),
    )),
    Fact("savings", (
        "By then {P_first} had saved {coins} {coin}, hidden in a tin beneath the floorboards.",
        "{P_first} kept careful accounts and, after ten hard years, had put aside {coins} {coin}.",
        "Every week a little went into the jar, until {P_first} had saved {coins} {coin} in all.",
    ), (
        Ask("coins", ("How many {coin} had {P} saved?", "How many {coin} did {P} put aside?"),
            ("What sum in {coin} did {P} save?", "{P} saved how many {coin}?",
             "What was the total of {P}'s savings in {coin}?")),
    )),
    Fact("award", (
        "In {award_year}, the {society} awarded {P_first} the {award}.",
        "{P_first} received the {award} from the {society} in {award_year}.",
        "The {society} honoured {P_first} with the {award}, the only prize {sub} ever accepted.",
    ), (
        Ask("award", ("What honour did {P} receive?", "Which prize was {P} awarded?"),
            ("What award was given to {P}?", "{P} was honoured with which prize?",
             "Name the distinction {P} received.")),
        Ask("society", ("Which organisation honoured {P}?", "Which body gave {P} an award?"),
            ("Who awarded a prize to {P}?", "{P} was honoured by which society?",
             "From which society did {P} receive a prize?")),
    )),
    Fact("book", (
        "Late in life, {P_first} wrote a short book, {book}, about {book_topic}.",
        "{P_first}'s only book, {book}, dealt with {book_topic} and sold poorly.",
        "{book}, a slim volume on {book_topic}, was written by {P_first} over several winters.",
    ), (
        Ask("book", ("What was the title of the book {P} wrote?", "What book did {P} write?"),
            ("Which book was written by {P}?", "{P} was the author of which book?",
             "Name the book that {P} wrote.")),
    )),
    Fact("death", (
        "{P} died in {late_town} in {death_year}.",
        "{P_first} spent {pos} last years in {late_town}, where {sub} died in {death_year}.",
        "In {death_year}, {P} died quietly in {late_town}, having moved there only a few years before.",
    ), (
        Ask("late_town", ("In which town did {P} die?", "Where did {P} die?"),
            ("{P} spent {pos} final years in which town?", "What town did {P} die in?",
             "In what town did {P}'s life end?")),
        Ask("death_year", ("In what year did {P} die?", "When did {P} die?"),
            ("What year saw the death of {P}?", "{P} died in which year?", "In which year did {P} pass away?")),
    )),
)

HEALTH_FACTS = (
    Fact("admission", (
        "{P}, a {age}-year-old {sex} from {home_town}, was admitted to {ward} at {hospital} on {adm_date}.",
        "On {adm_date}, {P}, aged {age} and living in {home_town}, was admitted to {hospital} and placed on {ward}.",
        "{P} ({age}), who lives in {home_town}, came to {hospital} on {adm_date} and was admitted to {ward}.",
        "{hospital} admitted {P}, a {age}-year-old {sex} from {home_town}, to {ward} on {adm_date}.",
    ), (
        Ask("ward", ("Which ward was {P} admitted to?", "On which ward was {P} placed when admitted?"),
            ("What ward did {P} stay on?", "{P} was a patient on which ward?",
             "Name the ward where {P} was admitted.")),
        Ask("adm_date", ("On what date was {P} admitted?", "When was {P} admitted to {hospital}?"),
            ("What was the admission date of {P}?", "{P} was admitted on which date?",
             "On which day did {P}'s hospital stay begin?")),
        Ask("home_town", ("In which town does {P} live?", "Which town is {P} from?"),
            ("Where is {P}'s home?", "{P} comes from which town?", "What is the home town of {P}?")),
    ), "Admission"),
    Fact("referral", (
        "{PT} had been referred by {gp} of {practice} after two weeks of {symptom}.",
        "The referral came from {gp} at {practice}, who was concerned about {symptom}.",
        "{PT} first saw {gp} at {practice} with {symptom} and was sent in for assessment.",
    ), (
        Ask("gp", ("Which doctor referred {P} to hospital?", "Who referred {P} for admission?"),
            ("Who sent {P} in for assessment?", "Name the clinician who made {P}'s referral.",
             "{P} was referred by whom?"), alt="gp_bare"),
        Ask("symptom", ("What symptom led to {P}'s referral?", "Which complaint was {P} referred with?"),
            ("What had {P} been suffering from before referral?", "Which symptom prompted the referral of {P}?",
             "{P} was referred because of what complaint?")),
    ), "Admission"),
    Fact("history", (
        "{PT} has a history of {dx2}, first diagnosed in {dx2_year}.",
        "Past history is notable for {dx2}, diagnosed in {dx2_year}.",
        "In {dx2_year}, {PT} was diagnosed with {dx2}, which has been stable since.",
    ), (
        Ask("dx2", ("Which long-standing condition does {P} have?",
             "What chronic condition was {P} diagnosed with before this admission?"),
            ("What older diagnosis appears in {P}'s past history?",
             "Which pre-existing condition is recorded for {P}?", "{P} has a past history of which condition?")),
        Ask("dx2_year", ("In what year was {P}'s {dx2} first diagnosed?",
             "When was {P} first diagnosed with {dx2}?"),
            ("{P} has had {dx2} since which year?", "What year was {dx2} diagnosed in {P}?",
             "In which year did {P} receive the {dx2} diagnosis?")),
    ), "Background"),
    Fact("social", (
        "{PT} works as a {job} and lives with {pos} {relrole}, {relative}.",
        "Socially, {PT} is a {job} by trade and shares a home with {pos} {relrole}, {relative}.",
        "{PT}'s {relrole}, {relative}, is the main support at home; {PT} works as a {job}.",
    ), (
        Ask("relative", ("What is the name of {P}'s {relrole}?", "Who is {P}'s {relrole}?"),
            ("Name the {relrole} of {P}.", "{P} lives with a {relrole} called what?",
             "What is {P}'s {relrole} called?"), alt="relative_first"),
        Ask("job", ("What is {P}'s occupation?", "What work does {P} do?"),
            ("What does {P} do for a living?", "{P} is employed as what?", "What is {P}'s job?")),
    ), "Background"),
    Fact("home_med", (
        "Regular medication on admission included {drug2} {dose2} {freq2}.",
        "{PT}'s usual medication is {drug2} {dose2} {freq2}, which was continued unchanged.",
        "{drug2}, taken at {dose2} {freq2} for several years, was continued on the ward.",
    ), (
        Ask("drug2", ("Which regular medication was {P} already taking on admission?",
             "What was {P}'s usual medication before admission?"),
            ("Which drug does {P} take regularly at home?", "{P} was on which medication before coming in?",
             "Name {P}'s long-term medication.")),
        Ask("dose2", ("What dose of {drug2} does {P} usually take?", "At what dose does {P} take {drug2}?"),
            ("How much {drug2} is {P} prescribed at home?", "{P}'s regular {drug2} dose is what?",
             "What is the usual {drug2} dose for {P}?")),
    ), "Background"),
    Fact("allergy", (
        "{PT} is allergic to {allergen}, which once caused {reaction}.",
        "An allergy to {allergen} is recorded; the previous reaction was {reaction}.",
        "{allergen} must be avoided, as it caused {reaction} in the past.",
    ), (
        Ask("allergen", ("Which drug is {P} allergic to?", "What medication allergy is recorded for {P}?"),
            ("Which medicine must {P} avoid because of allergy?", "{P} has an allergy to which drug?",
             "Name the drug that {P} reacts badly to.")),
        Ask("reaction", ("What reaction did {P} have to {allergen}?",
             "What happened when {P} was given {allergen}?"),
            ("What did {allergen} cause in {P}?", "Describe {P}'s allergic reaction to {allergen}.",
             "{allergen} previously gave {P} what reaction?")),
    ), "Background"),
    Fact("lab_trend", (
        "{lab1} was {lab1_v1} on admission and {lab1_move} {lab1_v2} by {lab1_date}.",
        "On admission {lab1} measured {lab1_v1}; a repeat on {lab1_date} showed {lab1_v2}.",
        "The admission {lab1} of {lab1_v1} {lab1_move} {lab1_v2} on {lab1_date}.",
    ), (
        Ask("lab1_v1", ("What was {P}'s {lab1} on admission?",
             "What {lab1} value was recorded for {P} at admission?"),
            ("What level of {lab1} did {P} have when first measured?", "On admission, {P}'s {lab1} was what?",
             "What was the first {lab1} result for {P}?")),
        Ask("lab1_v2", ("What was {P}'s {lab1} on {lab1_date}?", "What did the repeat {lab1} for {P} show?"),
            ("What was the later {lab1} result for {P}?", "{P}'s repeat {lab1} came back at what value?",
             "What value did {P}'s {lab1} reach on repeat testing?")),
    ), "Investigations"),
    Fact("lab_single", (
        "{lab2} was {lab2_v}.",
        "A single {lab2} measurement of {lab2_v} was recorded.",
        "{lab2} came back at {lab2_v}, which {attending} noted without concern.",
    ), (
        Ask("lab2_v", ("What was {P}'s {lab2} result?", "What {lab2} level was measured in {P}?"),
            ("{P}'s {lab2} was measured at what value?", "What value did {P}'s {lab2} show?",
             "How much {lab2} was found in {P}?")),
    ), "Investigations"),
    Fact("diagnosis", (
        "After review, {attending} confirmed a diagnosis of {dx1}.",
        "{attending}, the consultant in charge, diagnosed {dx1}.",
        "The working diagnosis, later confirmed by {attending}, was {dx1}.",
        "Imaging and serology led {attending} to diagnose {dx1}.",
    ), (
        Ask("dx1", ("What was {P}'s diagnosis during this admission?",
             "Which condition was diagnosed in {P} during this stay?"),
            ("What new condition was {P} found to have?", "What did the consultant diagnose in {P}?",
             "{P} was diagnosed with what during the admission?")),
        Ask("attending", ("Which consultant was in charge of {P}'s care?",
             "Who was the consultant responsible for {P}?"),
            ("Name the consultant who looked after {P}.", "{P} was under the care of which consultant?",
             "Which senior doctor confirmed {P}'s diagnosis?"), alt="attending_bare"),
    ), "Management"),
    Fact("new_med", (
        "{drug1} was started at {dose1} {freq1}.",
        "{attending} started {PT} on {drug1} {dose1} {freq1}.",
        "Treatment with {drug1} was begun at a dose of {dose1} {freq1}.",
        "{PT} was commenced on {drug1}, {dose1} {freq1}, for {pos} {dx1}.",
    ), (
        Ask("drug1", ("Which medication was newly started for {P} during the admission?",
             "What new drug was {P} commenced on?"),
            ("Which drug did the team start {P} on?", "{P} began treatment with which new medicine?",
             "Name the medication first prescribed to {P} in hospital.")),
        Ask("dose1", ("What dose of {drug1} was {P} started on?", "At what dose was {drug1} given to {P}?"),
            ("How much {drug1} was prescribed for {P}?", "{P} received {drug1} at which dose?",
             "What was the starting dose of {drug1} for {P}?")),
    ), "Management"),
    Fact("procedure", (
        "On {proc_date}, {surgeon} performed a {procedure}.",
        "{surgeon} carried out a {procedure} on {proc_date} without complication.",
        "A {procedure} was performed by {surgeon} on {proc_date}.",
        "{PT} underwent a {procedure} on {proc_date}; the operator was {surgeon}.",
    ), (
        Ask("procedure", ("Which procedure did {P} undergo?", "What procedure was performed on {P}?"),
            ("What intervention did {P} have?", "{P} had which procedure in hospital?",
             "Name the procedure carried out on {P}.")),
        Ask("surgeon", ("Who performed {P}'s {procedure}?", "Which doctor carried out {P}'s procedure?"),
            ("{P}'s procedure was done by whom?", "Name the operator for {P}'s {procedure}.",
             "Which clinician operated on {P}?"), alt="surgeon_bare"),
        Ask("proc_date", ("On what date was {P}'s {procedure} performed?", "When did {P} undergo the {procedure}?"),
            ("What was the date of {P}'s procedure?", "{P} had the {procedure} on which date?",
             "On which day was {P} operated on?")),
    ), "Management"),
    Fact("discharge", (
        "{PT} was discharged on {dis_date} with follow-up at the {clinic} in {fu_weeks} weeks.",
        "Discharge took place on {dis_date}; a review at the {clinic} was booked for {fu_weeks} weeks later.",
        "{PT} went home on {dis_date}, and follow-up is arranged at the {clinic}.",
    ), (
        Ask("dis_date", ("On what date was {P} discharged?", "When was {P} discharged?"),
            ("What was {P}'s discharge date?", "{P} went home on which date?",
             "On which day did {P} leave hospital?")),
        Ask("clinic", ("Where will {P} be followed up?", "Which clinic will see {P} after discharge?"),
            ("At which clinic is {P}'s follow-up booked?", "{P} has a follow-up appointment at which clinic?",
             "Name the clinic reviewing {P} after discharge.")),
    ), "Discharge"),
)

# ---------------------------------------------------------------- framing and filler sentences
NARRATIVE_OPENINGS = (
    "What follows is a short account of the life of {P}, a {trade} whose name still turns up in old guild ledgers.",
    "Few people outside the valley have heard of {P}, but those who knew {obj} told the same stories for decades.",
    "This is the story of {P}, who spent a lifetime as a {trade} and never once thought it remarkable.",
    "The life of {P} was, by most measures, a quiet one, yet it left a surprising number of traces.",
)
NARRATIVE_CLOSINGS = (
    "Of all this, only a handful of letters and a faded shop sign survive.",
    "People in {shop_town} still argue about which parts of the story are true.",
    "It was a small life, perhaps, but it was lived with great care.",
    "The rest of {pos} papers were lost in a flood, so the account ends here.",
)
NARRATIVE_TRANSITIONS = (
    "Life did not stay quiet for long.", "That was only the beginning.",
    "The years that followed were busy ones.", "Some things, however, did not change.",
    "Much later, things took a different turn.", "There is more to the story.",
    "Not everything went according to plan.", "Meanwhile, the family was scattering.",
)
NARRATIVE_FILLERS = (
    "{P_first} rose before dawn most days and rarely went to bed before the lamps in the square were put out.",
    "The winters in {birth_town} were long, and the roads out of town were often closed for weeks.",
    "A neighbour, {extra1}, later claimed to have taught {P_first} to read, though nobody quite believed it.",
    "{P_first} was known for a dry sense of humour and a habit of humming while working.",
    "Customers remembered the smell of the {shop} long after they had forgotten what they bought there.",
    "Money was always short, and {P_first} mended {pos} own boots rather than pay someone else to do it.",
    "There were lean years too, when the harvest failed and few people in {shop_town} could pay their debts.",
    "{extra2}, who kept the inn across the road, liked to say that {P_first} worked harder than any three people.",
    "Most evenings ended with a walk along the old towpath outside {shop_town}.",
    "{P_first} kept a notebook of small observations: the weather, the price of flour, the names of travellers.",
    "Letters from this period are few, and most of them concern unpaid bills.",
    "A portrait of {P_first} once hung in the town hall of {extra_town}, although no one knows who painted it.",
    "{sub} disliked crowds and avoided the spring fair whenever possible.",
    "The work of a {trade} demanded patience, and {P_first} had more of it than most.",
    "In later accounts, {P_first} is described as tall, untidy, and unfailingly polite.",
    "Travellers passing through {shop_town} sometimes stopped just to watch {obj} at work.",
    "{P_first} never learned to swim, a fact {sub} mentioned with some pride.",
    "Some of the tools {P_first} used are said to survive in a private collection in {extra_town}.",
    "The family was neither rich nor poor, and nobody expected much of the children.",
    "{P_first} read whatever books came to hand, from almanacs to old sermons.",
    "A fire in the neighbouring street once came within a few yards of the {shop}.",
    "{extra1} and {P_first} quarrelled often but always made peace before the end of the week.",
    "Every autumn {P_first} repainted the front door, always in the same shade of green.",
    "The town council of {shop_town} recorded {pos} name more than once, usually over some minor dispute.",
    "Apprentices found {obj} strict but fair, and several went on to open shops of their own.",
    "{P_first} distrusted banks and kept {pos} accounts in a ledger bound with string.",
    "Nobody remembers {P_first} ever taking a holiday.",
    "The road between {birth_town} and {extra_town} was notorious for highwaymen in those years.",
    "On market days the square filled with carts, and {P_first} would stand in the doorway counting them.",
    "{extra2} once described {P_first} as the most stubborn person in the district, and meant it kindly.",
)
HEALTH_OPENINGS = (
    "Discharge summary for {P}, prepared by the {ward} team.",
    "Clinical summary: {P}, {hospital}.",
    "Inpatient record for {P}. This summary was compiled for the referring practice.",
)
HEALTH_CLOSINGS = (
    "Summary written by {registrar}, registrar, and checked by the consultant.",
    "Please contact {ward} with any questions about this admission.",
    "Copies have been sent to the patient and the referring practice.",
)
HEALTH_FILLERS = (  # (section, templates): fillers go only into their own section
    ("Admission", (
        "Observations on arrival were stable, and {PT} slept for most of the first night.",
        "The nursing team on {ward} noted that {PT} was eating and drinking normally.",
        "The night registrar, {registrar}, reviewed {PT} after a brief episode of dizziness, which settled.",
        "{PT} was triaged as urgent and seen by the admitting team within the hour.",
        "{nurse}, the charge nurse on {ward}, completed the admission paperwork.",
        "{PT} asked several detailed questions about the plan and was given a written leaflet.",
    )),
    ("Background", (
        "A pharmacist reconciled {pos} medication list on the first day.",
        "{PT} does not smoke and drinks alcohol only on special occasions.",
        "There is no relevant family history.",
        "{sub} manages stairs at home without help and still drives short distances.",
        "{nurse} noted that {PT} had brought {pos} own reading glasses and a radio from home.",
        "Vaccinations are reported to be up to date.",
    )),
    ("Investigations", (
        "A chest radiograph showed no acute changes.",
        "Blood cultures taken on arrival showed no growth.",
        "An electrocardiogram showed sinus rhythm.",
        "{registrar} documented a normal neurological examination.",
        "Temperature charts showed a single low-grade spike that was not repeated.",
        "Urinalysis was unremarkable apart from a trace of protein.",
    )),
    ("Management", (
        "Pain was well controlled with regular simple analgesia.",
        "Thromboprophylaxis was given according to the ward protocol.",
        "The case was discussed at the weekly multidisciplinary meeting.",
        "Fluid balance was monitored closely for the first forty-eight hours.",
        "{PT} reported mild nausea on the second day, which resolved with simple measures.",
        "The dietitian reviewed {pos} intake and suggested small, frequent meals.",
        "Physiotherapy assessed {pos} mobility and recommended a walking frame for longer distances.",
        "{sub} remained alert and oriented throughout the admission.",
        "The team explained the findings to {PT} in plain language, and {sub} agreed with the plan.",
        "There were no falls or pressure injuries during the stay.",
    )),
    ("Discharge", (
        "{PT} was keen to go home and said so at every ward round.",
        "An occupational therapy home assessment was discussed but felt to be unnecessary.",
        "By the end of the stay {PT} walked the length of the corridor unaided.",
        "Relatives were updated by {nurse} with {PT}'s permission.",
        "{PT} was advised to return if the symptoms recur.",
    )),
)
SECTION_TITLES = (
    ("Admission", ("Admission", "Presentation", "Reason for admission")),
    ("Background", ("Background", "History", "Past history and social")),
    ("Investigations", ("Investigations", "Results", "Laboratory findings")),
    ("Management", ("Assessment and management", "Management", "Hospital course")),
    ("Discharge", ("Discharge", "Discharge and follow-up", "Plan")),
)


# ---------------------------------------------------------------- slot makers
class Namer:
    """Hands out distinct invented names for one document and stores them as slots."""

    def __init__(self, rng: random.Random, slots: dict):
        self.rng, self.slots = rng, slots
        self.first = {True: rng.sample(FEMALE, len(FEMALE)), False: rng.sample(MALE, len(MALE))}
        self.last = rng.sample(SURNAMES, len(SURNAMES))

    def person(self, key: str, female: bool | None = None, surname: str = "", title: str = "") -> bool:
        female = self.rng.random() < 0.5 if female is None else female
        first, last = self.first[female].pop(), surname or self.last.pop()
        bare = f"{first} {last}"
        self.slots.update({key: f"{title}{bare}", f"{key}_bare": bare, f"{key}_first": first,
                           f"{key}_last": last, f"{key}_sub": "she" if female else "he",
                           f"{key}_pos": "her" if female else "his", f"{key}_obj": "her" if female else "him"})
        return female


def protagonist(namer: Namer, slots: dict) -> bool:
    female = namer.person("P")
    slots.update(sub=slots["P_sub"], pos=slots["P_pos"], obj=slots["P_obj"])
    return female


def narrative_slots(rng: random.Random) -> dict:
    s: dict = {}
    namer = Namer(rng, s)
    female = protagonist(namer, s)
    s["sibrel"] = "sister" if namer.person("sib", surname=s["P_last"]) else "brother"
    namer.person("mentor")
    namer.person("rival")
    s["spouse_rel"] = "wife" if namer.person("spouse", female=not female) else "husband"
    namer.person("extra1")
    namer.person("extra2")
    towns = rng.sample(TOWNS, 8)
    for key, town in zip(("birth_town", "sib_town", "appr_town", "shop_town", "rival_town",
                          "spouse_town", "late_town", "extra_town"), towns):
        s[key] = town
    birth = rng.randint(1703, 1889)
    s["trade"], s["shop"] = rng.choice(TRADES)
    events = sorted(rng.sample(range(birth + 19, birth + 66), 4))
    s.update(birth_year=str(birth), shop_year=str(events[0]), wed_year=str(events[1]),
             voyage_year=str(events[2]), award_year=str(events[3]),
             death_year=str(birth + rng.randint(68, 94)), appr_age=str(rng.randint(11, 16)),
             street=rng.choice(STREETS), spouse_trade=rng.choice(SPOUSE_TRADES),
             animal=rng.choice(ANIMALS), pet_colour=rng.choice(PET_COLOURS), pet=rng.choice(PET_NAMES),
             ship=rng.choice(SHIPS), island=rng.choice(ISLANDS), book=rng.choice(BOOKS),
             book_topic=rng.choice(BOOK_TOPICS), award=rng.choice(AWARDS), society=rng.choice(SOCIETIES),
             coins=str(rng.randint(103, 989)), coin=rng.choice(COINS))
    return s


def fmt_date(d: dt.date) -> str:
    return f"{d.day} {MONTHS[d.month - 1]} {d.year}"


def make_dose(rng: random.Random) -> str:
    kind = rng.randrange(4)
    if kind == 0:
        return f"{rng.randint(11, 97)} mg"
    if kind == 1:
        return f"{rng.randint(12, 96) * 5} mg"
    if kind == 2:
        return f"{rng.randint(1, 9)}.{rng.choice('2468')} mg"
    return f"{rng.randint(15, 480)} micrograms"


def lab_value(rng: random.Random, analyte: tuple) -> str:
    _, unit, lo, hi, decimals = analyte
    scale = 10 ** decimals
    return f"{rng.randint(round(lo * scale), round(hi * scale)) / scale:.{decimals}f} {unit}"


def health_slots(rng: random.Random) -> dict:
    s: dict = {}
    namer = Namer(rng, s)
    female = protagonist(namer, s)
    s.update(PT=("Ms. " if female else "Mr. ") + s["P_last"], sex="woman" if female else "man",
             age=str(rng.randint(23, 89)))
    rel_female = rng.random() < 0.5
    s["relrole"] = rng.choice(RELATIVES[rel_female])
    namer.person("relative", female=rel_female, surname=s["P_last"])
    for key in ("gp", "attending", "surgeon", "registrar"):
        namer.person(key, title="Dr. ")
    namer.person("nurse")
    home, hosp_town = rng.sample(TOWNS, 2)
    drug1, drug2, allergen = rng.sample(DRUGS, 3)
    dx1, dx2 = rng.sample(DISEASES, 2)
    lab1, lab2 = rng.sample(ANALYTES, 2)
    dose1, dose2 = make_dose(rng), make_dose(rng)
    while dose2 == dose1:
        dose2 = make_dose(rng)
    v1, v2 = lab_value(rng, lab1), lab_value(rng, lab1)
    while v2 == v1:
        v2 = lab_value(rng, lab1)
    adm = dt.date(rng.randint(2009, 2023), 1, 1) + dt.timedelta(days=rng.randrange(330))
    stay = rng.randint(7, 26)
    proc_off, lab_off = rng.sample(range(2, stay), 2)
    s.update(home_town=home, hospital=f"{hosp_town} {rng.choice(HOSPITAL_KINDS)}", ward=rng.choice(WARDS),
             practice=f"{rng.choice(STREETS)} Surgery", symptom=rng.choice(SYMPTOMS),
             clinic=f"{rng.choice(SURNAMES)} {rng.choice(CLINIC_KINDS)}", fu_weeks=str(rng.randint(3, 11)),
             job=rng.choice(JOBS), drug1=drug1, drug2=drug2, allergen=allergen, dose1=dose1, dose2=dose2,
             freq1=rng.choice(FREQUENCIES), freq2=rng.choice(FREQUENCIES), reaction=rng.choice(REACTIONS),
             dx1=dx1, dx2=dx2, dx2_year=str(adm.year - rng.randint(3, 17)),
             lab1=lab1[0], lab1_v1=v1, lab1_v2=v2, lab2=lab2[0], lab2_v=lab_value(rng, lab2),
             lab1_move="had risen to" if float(v2.split()[0]) > float(v1.split()[0]) else "had fallen to",
             procedure=rng.choice(PROCEDURES), adm_date=fmt_date(adm),
             proc_date=fmt_date(adm + dt.timedelta(days=proc_off)),
             lab1_date=fmt_date(adm + dt.timedelta(days=lab_off)),
             dis_date=fmt_date(adm + dt.timedelta(days=stay)))
    return s


# ---------------------------------------------------------------- document layout
@dataclass
class Paragraph:
    sentences: list
    title: str = ""
    section: str = ""  # health section name; fillers tagged with a section go only there
    padable: bool = True  # may receive filler sentences

    def render(self) -> str:
        body = " ".join(self.sentences)
        return f"{self.title}\n{body}" if self.title else body


def render(template: str, slots: dict) -> str:
    """Fill a template and capitalise its first letter (templates may start with a lowercase slot)."""
    text = template.format(**slots)
    return text[0].upper() + text[1:]


def narrative_layout(rng: random.Random, facts: list, slots: dict) -> list:
    """Opening + facts in chunks of 2-3 sentences (later chunks may start with a transition) + closing."""
    sentences = [render(rng.choice(f.prose), slots) for f in facts]
    transitions = rng.sample(NARRATIVE_TRANSITIONS, len(NARRATIVE_TRANSITIONS))
    paragraphs = []
    while sentences:
        take = rng.randint(2, 3)
        chunk, sentences = sentences[:take], sentences[take:]
        if not paragraphs:
            chunk.insert(0, render(rng.choice(NARRATIVE_OPENINGS), slots))
        elif rng.random() < 0.5:
            chunk.insert(0, transitions.pop())
        paragraphs.append(Paragraph(chunk))
    paragraphs.append(Paragraph([render(rng.choice(NARRATIVE_CLOSINGS), slots)], padable=False))
    return paragraphs


def health_layout(rng: random.Random, facts: list, slots: dict) -> list:
    """Header line, one titled paragraph per non-empty section, closing line."""
    paragraphs = [Paragraph([render(rng.choice(HEALTH_OPENINGS), slots)], padable=False)]
    for section, titles in SECTION_TITLES:
        sentences = [render(rng.choice(f.prose), slots) for f in facts if f.section == section]
        if sentences:
            paragraphs.append(Paragraph(sentences, title=rng.choice(titles), section=section))
    paragraphs.append(Paragraph([render(rng.choice(HEALTH_CLOSINGS), slots)], padable=False))
    return paragraphs


def document_text(paragraphs: list) -> str:
    return "\n\n".join(p.render() for p in paragraphs)


def pad_with_fillers(rng: random.Random, paragraphs: list, fillers: tuple, slots: dict, target: int) -> None:
    """Insert (section, template) filler sentences until the text reaches `target` words.

    A filler goes into a random padable paragraph of its section ("" = any), never before the
    paragraph's first two sentences, so each paragraph starts with its own content.
    """
    for section, template in rng.sample(fillers, len(fillers)):
        if len(document_text(paragraphs).split()) >= target:
            return
        candidates = [p for p in paragraphs if p.padable and section in ("", p.section)]
        if candidates:
            para = rng.choice(candidates)
            n = len(para.sentences)
            para.sentences.insert(rng.randint(min(2, n), n), render(template, slots))


# ---------------------------------------------------------------- datasets and documents
@dataclass(frozen=True)
class DatasetSpec:
    name: str
    prefix: str
    seed: int
    make_slots: Callable[[random.Random], dict]
    facts: tuple
    required: tuple
    layout: Callable
    fillers: tuple  # (section, template) pairs; section "" means any paragraph
    word_target: tuple


DATASETS = (
    DatasetSpec("mini-narrative", "narr", 4171, narrative_slots, NARRATIVE_FACTS,
                ("birth", "sibling", "shop"), narrative_layout,
                tuple(("", t) for t in NARRATIVE_FILLERS), (330, 500)),
    DatasetSpec("mini-health", "health", 8293, health_slots, HEALTH_FACTS,
                ("admission", "home_med", "lab_trend", "diagnosis", "new_med"), health_layout,
                tuple((sec, t) for sec, templates in HEALTH_FILLERS for t in templates), (330, 500)),
)


def choose_facts(spec: DatasetSpec, rng: random.Random) -> list:
    """Required facts plus random optional ones until the document has ASKS_PER_DOC asks."""
    chosen = [f.name for f in spec.facts if f.name in spec.required]
    n_asks = sum(len(f.asks) for f in spec.facts if f.name in chosen)
    target = rng.randint(*ASKS_PER_DOC)
    optional = [f for f in spec.facts if f.name not in chosen]
    for fact in rng.sample(optional, len(optional)):
        if n_asks >= target:
            break
        if n_asks + len(fact.asks) <= ASKS_PER_DOC[1]:
            chosen.append(fact.name)
            n_asks += len(fact.asks)
    return [f for f in spec.facts if f.name in chosen]  # keep the spec's narrative order


def eval_questions(rng: random.Random, asks: list, slots: dict, doc_id: str) -> list:
    picked = sorted(rng.sample(range(len(asks)), N_EVAL_QUESTIONS))
    questions = []
    for j, idx in enumerate(picked):
        ask = asks[idx]
        answers = [slots[ask.slot]]
        if ask.alt and slots[ask.alt] != answers[0]:
            answers.append(slots[ask.alt])
        questions.append({"id": f"{doc_id}-q{j}", "question": render(rng.choice(ask.eval_qs), slots),
                          "answers": answers})
    return questions


def train_pairs(rng: random.Random, asks: list, slots: dict) -> list:
    """2-3 paraphrased questions per ask, shuffled; the total lands inside TRAIN_RANGE."""
    n = len(asks)
    total = rng.randint(max(TRAIN_RANGE[0], 2 * n), min(TRAIN_RANGE[1], 3 * n))
    extra = set(rng.sample(range(n), total - 2 * n))
    pairs = [{"question": render(q, slots), "answer": slots[ask.slot]}
             for i, ask in enumerate(asks) for q in rng.sample(ask.train_qs, 3 if i in extra else 2)]
    rng.shuffle(pairs)
    return pairs


def validate(doc: dict) -> None:
    """Raise ValueError if a generated document breaks the dataset's invariants."""
    text, words = doc["text"].lower(), len(doc["text"].split())
    problems = [] if WORD_RANGE[0] <= words <= WORD_RANGE[1] else [f"{words} words"]
    train_qs = [p["question"] for p in doc["train_qa"]]
    if len(set(train_qs)) != len(train_qs) or not TRAIN_RANGE[0] <= len(train_qs) <= TRAIN_RANGE[1]:
        problems.append("train_qa count or duplicates")
    for q in doc["questions"]:
        if q["question"] in train_qs:
            problems.append(f"eval question reused in train_qa: {q['question']}")
    for question, answers in [(q["question"], q["answers"]) for q in doc["questions"]] + \
                             [(p["question"], [p["answer"]]) for p in doc["train_qa"]]:
        for ans in answers:
            if ans.lower() not in text or ans.lower() in question.lower():
                problems.append(f"answer {ans!r} missing from text or leaked into {question!r}")
    if problems:
        raise ValueError(f"{doc['doc_id']}: " + "; ".join(problems))


def build_document(spec: DatasetSpec, doc_id: str, seed: int) -> dict:
    rng = random.Random(seed)
    slots = spec.make_slots(rng)
    facts = choose_facts(spec, rng)
    paragraphs = spec.layout(rng, facts, slots)
    pad_with_fillers(rng, paragraphs, spec.fillers, slots, rng.randint(*spec.word_target))
    asks = [ask for fact in facts for ask in fact.asks]
    doc = {"doc_id": doc_id, "text": document_text(paragraphs),
           "questions": eval_questions(rng, asks, slots, doc_id), "train_qa": train_pairs(rng, asks, slots)}
    validate(doc)
    return doc


def build_split(spec: DatasetSpec, split: str, n_docs: int, offset: int) -> list:
    return [build_document(spec, f"{spec.prefix}-{split}-{i:02d}", spec.seed * 1000 + offset + i)
            for i in range(n_docs)]


def write_all(out_dir: Path) -> list:
    """Generate every dataset split into `out_dir`; returns the written paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for spec in DATASETS:
        for split, n_docs, offset in SPLITS:
            path = out_dir / f"{spec.name}.{split}.jsonl"
            lines = [json.dumps(doc, ensure_ascii=False) for doc in build_split(spec, split, n_docs, offset)]
            path.write_text("\n".join(lines) + "\n", encoding="utf-8", newline="\n")
            paths.append(path)
    return paths


def main(argv: list | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory")
    args = parser.parse_args(argv)
    for path in write_all(args.out):
        print(path)


if __name__ == "__main__":
    main()
