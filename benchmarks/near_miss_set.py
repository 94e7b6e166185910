"""The labelled near-miss set of the guard's classes: writes benchmarks/data/near_miss_pairs.tsv.

    python -m benchmarks.near_miss_set

Each row is a (cached prompt, new prompt) pair of one class (units, times, days, negation, entity,
order) labelled ``trap`` (asks for something else: must not be served the cached answer) or
``paraphrase`` (asks the same: should be). The frames below were written for this set, by hand,
apart from the guard's word lists; each frame is filled with a few values (seeded), and the pairs
of each (class, label) are split in half at random into ``calibration`` and ``held_out``. The
file is committed; this script only says how it was made (re-running it gives the same file).
"""

from __future__ import annotations

import csv
import random
from pathlib import Path

PATH = Path(__file__).parent / "data" / "near_miss_pairs.tsv"

# Each frame: (cached prompt, new prompt, fillers). "{a}" and "{b}" are two different values of
# the list (traps) or two spellings of one value (paraphrases, given as "x|y").
TRAPS = {
    "units": [
        ("i need a {a}kg bag of dog food", "i need a {b}kg bag of dog food", "2 5 10 15 20 25"),
        ("can i attach a {a}MB file to an email", "can i attach a {b}MB file to an email", "10 20 25 50 200"),
        ("is a {a}GB phone plan enough for a month", "is a {b}GB phone plan enough for a month", "2 5 8 10 50"),
        ("how long does it take to run {a}km", "how long does it take to run {b}km", "5 10 21 42"),
        ("can i bring a {a}lb suitcase on the plane", "can i bring a {b}lb suitcase on the plane", "40 50 70"),
        ("how many calories in a {a}oz steak", "how many calories in a {b}oz steak", "6 8 12 16"),
        ("what is a good {a}mph speed for a bike", "what is a good {b}mph speed for a bike", "10 15 20"),
        ("is {a}% a good savings rate", "is {b}% a good savings rate", "2 4 5 10"),
        ("buy a {a}TB external drive", "buy a {b} TB external drive", "1 2 4"),
        ("how much is a {a}ml bottle of water", "how much is a {b}ml bottle of water", "330 500 750"),
    ],
    "times": [
        ("set an alarm for {a}", "set an alarm for {b}", "six am|seven am|6:30am|7pm|8 pm|21:00"),
        ("wake me up at {a}", "wake me up at {b}", "seven pm|8pm|half past six|19:00|9 in the morning"),
        ("book a table for two at {a}", "book a table for two at {b}", "7pm|7:30 pm|eight pm|20:30"),
        ("remind me to call mom at {a}", "remind me to call mom at {b}", "5pm|six pm|18:30|noon"),
        ("is the pharmacy open at {a}", "is the pharmacy open at {b}", "8am|nine am|22:00|10 pm"),
        ("schedule the meeting at {a}", "schedule the meeting at {b}", "3pm|15:30|quarter past three pm|four pm"),
    ],
    "days": [
        ("is the bank open on {a}", "is the bank open on {b}", "weekdays|weekends|saturdays|sundays"),
        ("what is on my calendar {a}", "what is on my calendar {b}",
         "monday morning|monday evening|tuesday morning|tuesday afternoon"),
        ("when does the gym open on {a}", "when does the gym open on {b}", "weekdays|saturday|sunday|weekends"),
        ("are there any meetings {a}", "are there any meetings {b}", "tomorrow|on friday|next week|on weekdays"),
        ("does the bus run {a}", "does the bus run {b}", "on weekends|monday to friday|on sundays|at night"),
        ("what is the weather this {a}", "what is the weather this {b}", "morning|evening|afternoon|weekend"),
    ],
    "negation": [
        ("i would like a {a} room", "i would like a {b} room", "smoking|non-smoking"),
        ("is my plane ticket {a}", "is my plane ticket {b}", "refundable|non-refundable"),
        ("show me hotels {a} $100 a night", "show me hotels {b} $100 a night", "over|under"),
        ("find laptops that cost {a} 500 dollars", "find laptops that cost {b} 500 dollars", "more than|less than"),
        ("how do i {a} the living room lights", "how do i {b} the living room lights", "turn on|turn off"),
        ("should i {a} my tesla stock now", "should i {b} my tesla stock now", "buy|sell"),
        ("what are the {a} at terminal 2", "what are the {b} at terminal 2", "arrivals|departures"),
        ("how do i {a} my debit card", "how do i {b} my debit card", "lock|unlock"),
        ("why is my account {a}", "why is my account {b}", "active|inactive"),
        ("list the {a} restaurants nearby", "list the {b} restaurants nearby", "cheapest|most expensive"),
        ("how do i {a} automatic payments", "how do i {b} automatic payments", "enable|disable"),
        ("what time is {a} at the hotel", "what time is {b} at the hotel", "check in|check out"),
        ("is this product {a}", "is this product {b}", "available|unavailable"),
        ("how do i {a} my bank account", "how do i {b} my bank account", "connect|disconnect"),
        ("what is the {a} temperature today", "what is the {b} temperature today", "highest|lowest"),
    ],
    "entity": [
        ("what is the weather like in {a}", "what is the weather like in {b}",
         "lagos|nairobi|accra|addis ababa|casablanca"),
        ("find me a hotel in {a}", "find me a hotel in {b}", "kyoto|osaka|hanoi|manila|jakarta"),
        ("do i need a visa to visit {a}", "do i need a visa to visit {b}", "vietnam|cambodia|laos|sri lanka|qatar"),
        ("what time is it in {a}", "what time is it in {b}", "auckland|lima|bogota|santiago|quito"),
        ("how expensive is it to live in {a}", "how expensive is it to live in {b}",
         "zurich|geneva|oslo|stockholm|copenhagen"),
        ("what is the population of {a}", "what is the population of {b}", "chengdu|wuhan|shenzhen|karachi|dhaka"),
        ("things to do in {a} this summer", "things to do in {b} this summer",
         "porto|seville|valencia|krakow|budapest"),
    ],
    "order": [
        ("book a train from {a} to {b}", "book a train from {b} to {a}", "paris|lyon|marseille|brussels"),
        ("how long is the flight from {a} to {b}", "how long is the flight from {b} to {a}",
         "tokyo|seoul|sydney|delhi"),
        ("convert 100 {a} to {b}", "convert 100 {b} to {a}", "dollars|euros|yen|pesos"),
        ("transfer money from {a} to {b}", "transfer money from {b} to {a}", "checking|savings|chase|paypal"),
        ("translate this from {a} to {b}", "translate this from {b} to {a}", "english|french|german|japanese"),
        ("cheap flights to {a}", "cheap flights from {a}", "madrid|lisbon|athens|rome|istanbul"),
        ("bus schedule from {a} to {b}", "bus schedule from {b} to {a}", "berlin|munich|hamburg|prague"),
    ],
}

# Paraphrases: (cached, new, values) where each value is "cached form|new form".
PARAPHRASES = {
    "units": [
        ("i need a {a} bag of dog food",
         "i need a bag of dog food that weighs {b}",
         "5kg|5 kg;10kg|10 kilograms;15kg|15 kilos"),
        ("can i attach a {a} file to an email",
         "am i able to email a file of {b}",
         "20MB|20 mb;50MB|50 megabytes;10MB|10 mb"),
        ("is a {a} phone plan enough", "will a {b} data plan be enough", "5GB|5 gb;10GB|10 gigabytes;8GB|8 gb"),
        ("how long does it take to run {a}",
         "how much time do i need to run {b}",
         "5km|5 kilometers;10km|10 km;21km|21 kilometres"),
        ("can i bring a {a} suitcase on board", "is a {b} suitcase allowed on the plane", "50lb|50 pound;40lb|40 lbs"),
        ("how many calories are in {a} of chicken",
         "calories in {b} of chicken",
         "8oz|8 ounces;6oz|6 oz;100g|100 grams"),
        ("is {a} interest a good savings rate",
         "would {b} interest be a good rate for savings",
         "5%|5 percent;4%|4%;2%|2 %"),
        ("how much does a {a} bottle of water cost",
         "price of a {b} water bottle",
         "500ml|500 ml;750ml|750 milliliters"),
        ("buy a {a} external drive",
         "i want to purchase a {b} external hard drive",
         "2TB|2 tb;4TB|four tb;1TB|1 terabyte"),
        ("what is {a} in pounds", "convert {b} to pounds", "5kg|5 kilograms;10kg|10 kg;2kg|two kg"),
    ],
    "times": [
        ("set an alarm for {a}",
         "please wake me at {b}",
         "seven pm|7pm;6:30am|half past six am;19:00|7 pm;8am|eight am"),
        ("book a table for two at {a}",
         "reserve a table for 2 people at {b}",
         "7pm|seven pm;20:30|8:30pm;7:30 pm|half past seven pm"),
        ("remind me to call mom at {a}", "at {b} remind me to call my mother", "5pm|17:00;six pm|6pm;noon|12:00"),
        ("is the pharmacy open at {a}",
         "will the pharmacy be open at {b}",
         "8am|8 in the morning;10 pm|22:00;nine pm|21:00"),
        ("schedule the meeting for {a}",
         "put the meeting on my calendar at {b}",
         "3pm|15:00;quarter past three pm|3:15pm;4 pm|four pm"),
        ("wake me up at {a}",
         "i need to be woken up at {b}",
         "7 in the evening|7pm;6am|six am;5:45am|quarter to six am"),
        ("what will the weather be at {a}", "weather forecast for {b}", "3pm|15:00;9am|nine am;6pm|18:00"),
    ],
    "days": [
        ("is the bank open on {a}",
         "can i go to the bank on {b}",
         "weekdays|monday through friday;weekends|saturday and sunday;weekdays|monday to friday"),
        ("good morning, {a}",
         "{b}",
         "what is on my calendar today|what's on my calendar today;what is the weather|how is the weather;"
         "any new messages|do i have new messages"),
        ("good evening {a}",
         "hi {b}",
         "how are you|how are you doing;what can you do|what are you able to do;"
         "tell me a joke|tell me something funny"),
        ("what is on my calendar {a}",
         "do i have anything scheduled {b}",
         "tuesday morning|tuesday;friday|on friday;tomorrow morning|tomorrow"),
        ("when does the gym open on {a}",
         "what are the gym hours on {b}",
         "weekdays|monday to friday;weekends|saturdays and sundays;sundays|sunday"),
        ("does the bus run on {a}",
         "is there bus service {b}",
         "weekends|on saturday and sunday;weekdays|monday thru friday;sundays|on sundays"),
        ("is the library open {a}",
         "library hours {b}",
         "on weekdays|monday to friday;on weekends|on saturday and sunday;this morning|this morning"),
        ("morning! {a}",
         "{b}",
         "what should i eat for breakfast|what should i have for breakfast;play some music|put on some music"),
    ],
    "negation": [
        ("i would like a {a} room",
         "can i get a {b} room",
         "non-smoking|non smoking;smoking|smoking;nonsmoking|non-smoking"),
        ("is my plane ticket {a}",
         "can i get a refund on my {b} ticket",
         "refundable|refundable;non-refundable|nonrefundable"),
        ("show me hotels {a} $100 a night",
         "hotels that cost {b} 100 dollars per night",
         "over|more than;under|less than;below|under"),
        ("how do i {a} the living room lights",
         "{b} the lights in the living room please",
         "turn on|turn on;turn off|switch off"),
        ("should i {a} my tesla stock", "is now a good time to {b} tesla shares", "buy|buy;sell|sell"),
        ("how do i {a} my debit card", "i need to {b} my debit card", "unlock|unlock;lock|lock;freeze|freeze"),
        ("why is my account {a}",
         "my account shows as {b}, why",
         "inactive|inactive;unavailable|unavailable;disabled|disabled"),
        ("what time is {a} at the hotel", "when is the hotel's {b} time", "check in|check-in;check out|checkout"),
        ("is this product {a}",
         "can i tell if this item is {b}",
         "unavailable|unavailable;available|available;in stock|in stock"),
        ("list the {a} restaurants nearby",
         "what are the {b} places to eat near me",
         "cheapest|cheapest;most expensive|priciest"),
    ],
    "entity": [
        ("what is the weather like in {a}",
         "how is the weather in {b}",
         "lagos|lagos;nairobi|nairobi;zürich|zurich;são paulo|sao paulo"),
        ("find me a hotel in {a}",
         "i need a place to stay in {b}",
         "kyoto|kyoto;hanoi|hanoi;manila|manila;jakarta|jakarta"),
        ("do i need a visa to visit {a}",
         "is a visa required for a trip to {b}",
         "vietnam|vietnam;qatar|qatar;sri lanka|sri lanka"),
        ("what time is it in {a}", "tell me the current time in {b}", "auckland|auckland;bogota|bogotá;quito|quito"),
        ("how expensive is it to live in {a}",
         "what is the cost of living in {b}",
         "geneva|geneva;oslo|oslo;copenhagen|copenhagen"),
        ("what is the population of {a}", "how many people live in {b}", "chengdu|chengdu;karachi|karachi;dhaka|dhaka"),
        ("things to do in {a} this summer",
         "what can i do in {b} during the summer",
         "porto|porto;seville|sevilla;kraków|krakow"),
    ],
    "order": [
        ("book a train from {a} to {b}",
         "i need a train ticket to {b} from {a}",
         "paris,lyon;marseille,brussels;lyon,paris"),
        ("how long is the flight from {a} to {b}",
         "flight time from {a} to {b}",
         "tokyo,seoul;sydney,delhi;seoul,tokyo"),
        ("convert 100 {a} to {b}", "how many {b} is 100 {a}", "dollars,euros;euros,yen;pesos,dollars"),
        ("transfer money from {a} to {b}",
         "move money from my {a} to my {b}",
         "checking,savings;savings,checking;chase,paypal"),
        ("translate this from {a} to {b}",
         "translate this {a} text into {b}",
         "english,french;german,english;japanese,english"),
        ("cheap flights to {a}", "find me inexpensive flights to {a}", "madrid,;lisbon,;athens,;istanbul,"),
        ("bus schedule from {a} to {b}",
         "when do buses leave {a} for {b}",
         "berlin,munich;munich,hamburg;prague,berlin"),
        ("directions from {a} to {b}", "how do i get to {b} from {a}", "london,manchester;rome,milan;boston,chicago"),
    ],
}


def _traps(rng: random.Random) -> list[tuple[str, str, str, str]]:
    rows = []
    for cls, frames in TRAPS.items():
        for cached, prompt, values in frames:
            options = values.split("|") if "|" in values else values.split()
            pairs = [(a, b) for a in options for b in options if a != b]
            for a, b in rng.sample(pairs, min(len(pairs), 4 if len(frames) < 8 else 3)):
                rows.append((cls, "trap", cached.format(a=a, b=b), prompt.format(a=a, b=b)))
    return rows


def _paraphrases() -> list[tuple[str, str, str, str]]:
    rows = []
    for cls, frames in PARAPHRASES.items():
        for cached, prompt, values in frames:
            for value in values.split(";"):
                sep = "|" if "|" in value else ","
                a, b = value.split(sep)
                if cls == "order":  # the same direction in other words
                    rows.append((cls, "paraphrase", cached.format(a=a, b=b), prompt.format(a=a, b=b)))
                else:
                    rows.append((cls, "paraphrase", cached.format(a=a), prompt.format(b=b)))
    return rows


def build(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    rows = _traps(rng) + _paraphrases()
    out = []
    for key in sorted({(cls, label) for cls, label, _, _ in rows}):
        group = [r for r in rows if (r[0], r[1]) == key]
        rng.shuffle(group)
        half = (len(group) + 1) // 2
        for i, (cls, label, cached, prompt) in enumerate(group):
            out.append({"class": cls, "label": label, "split": "calibration" if i < half else "held_out",
                        "cached": cached, "prompt": prompt})
    return out


def load(split: str | None = None) -> list[dict]:
    rows = list(csv.DictReader(PATH.open(encoding="utf-8"), delimiter="\t"))
    return [r for r in rows if split is None or r["split"] == split]


def main() -> None:
    rows = build()
    PATH.parent.mkdir(parents=True, exist_ok=True)
    with PATH.open("w", encoding="utf-8", newline="") as f:
        writer = csv.DictWriter(f, ["class", "label", "split", "cached", "prompt"], delimiter="\t", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    counts: dict = {}
    for r in rows:
        counts[(r["class"], r["label"])] = counts.get((r["class"], r["label"]), 0) + 1
    print(f"{len(rows)} pairs -> {PATH}")
    for key, n in sorted(counts.items()):
        print(*key, n)


if __name__ == "__main__":
    main()
