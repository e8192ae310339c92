"""A wall clock a test moves by hand, for fakes and adapters that take `clock=`."""


class ManualClock:
    """Time stands still until a test sets or advances it."""

    def __init__(self, now: float = 1_796_300_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds
