"""The stand-in LLM ships with the load-test harness (`curator_loadtest.stand_in_llm`), which starts
it behind the cache of a server it runs; this name is kept for code written against the old place."""

from curator_loadtest.stand_in_llm import EMBEDDING_DIM, StandInLLM, bag_of_words

__all__ = ["EMBEDDING_DIM", "StandInLLM", "bag_of_words"]
