"""A server's SDK connection to another Curator server (a read replica, a shard's copy), with
each collection looked up once: the calls it forwards name collections, and a lookup is a call."""


class Peer:
    def __init__(self, db):
        self.db, self._collections = db, {}

    def collection(self, name: str):
        col = self._collections.get(name)
        if col is None:
            col = self._collections[name] = self.db.collection(name)
        return col

    def forget(self, name: str) -> None:
        """After `name` was dropped or created again: look it up anew."""
        self._collections.pop(name, None)

    def close(self) -> None:
        self.db.close()
