"""Messages to a Slack-compatible webhook (a JSON `{"text": ...}` POST): the sweep finished,
failed or was interrupted, or a trial failed for a reason no retry heals.

The URL comes from the environment variable the sweep file's `notify.webhook_env` names. At
most one message per kind of event per `min_interval_s`; what comes meanwhile is summed into
the next one. Posting happens on a thread of its own with a bounded timeout: a webhook that
hangs or refuses never stops or slows the sweep, and its failure is logged once.
"""

from __future__ import annotations

import json
import queue
import sys
import threading
import time
import urllib.request
from collections.abc import Callable
from typing import ClassVar

from search_spaces.spec import NotifySpec

MAX_LISTED = 10  # events listed in one summed message; the rest are counted


class Notifier:
    """The driver's messenger. `active` is the driver's own, for Tune callbacks restored
    from a sweep's saved state (they cannot carry it)."""

    active: ClassVar[Notifier | None] = None

    def __init__(
        self,
        url: str,
        *,
        sweep: str,
        spec: NotifySpec,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.url, self.sweep, self.spec, self.clock = url, sweep, spec, clock
        self.events: queue.Queue[tuple[str, str] | None] = queue.Queue()
        self.last_sent: dict[str, float] = {}
        self.pending: dict[str, list[str]] = {}
        self.sent: list[dict] = []  # what was posted (tests and the summary read it)
        self.warned = False
        self.thread = threading.Thread(target=self._run, name="sweep-notify", daemon=True)
        self.thread.start()

    @classmethod
    def from_spec(cls, spec: NotifySpec, sweep: str, env: dict[str, str]) -> Notifier | None:
        if spec.webhook_env is None or not env.get(spec.webhook_env, "").strip():
            return None
        return cls(env[spec.webhook_env].strip(), sweep=sweep, spec=spec)

    def send(self, kind: str, text: str) -> None:
        """Queue one event (never blocks)."""
        if kind in self.spec.events:
            self.events.put((kind, text))

    def close(self) -> None:
        """Send what is pending, waiting at most about one POST's timeout."""
        self.events.put(None)
        self.thread.join(timeout=self.spec.timeout_s + 1.0)

    def _run(self) -> None:
        while True:
            try:
                item = self.events.get(timeout=1.0)
            except queue.Empty:
                item = ()
            if item is None:  # closing: everything pending goes out now
                for kind in list(self.pending):
                    self._flush(kind)
                return
            if item:
                kind, text = item
                self.pending.setdefault(kind, []).append(text)
            for kind in list(self.pending):
                if (
                    self.clock() - self.last_sent.get(kind, -float("inf"))
                    >= self.spec.min_interval_s
                ):
                    self._flush(kind)

    def _flush(self, kind: str) -> None:
        texts = self.pending.pop(kind, [])
        if not texts:
            return
        self.last_sent[kind] = self.clock()
        if len(texts) == 1:
            text = texts[0]
        else:
            listed = "\n".join(f"• {t}" for t in texts[:MAX_LISTED])
            more = len(texts) - MAX_LISTED
            text = f"sweep {self.sweep}: {len(texts)} × {kind}\n{listed}" + (
                f"\n… and {more} more" if more > 0 else ""
            )
        self._post({"text": text, "sweep": self.sweep, "event": kind, "count": len(texts)})

    def _post(self, payload: dict) -> None:
        request = urllib.request.Request(
            self.url,
            data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        try:
            with urllib.request.urlopen(request, timeout=self.spec.timeout_s) as answer:
                answer.read()
            self.sent.append(payload)
        except Exception as e:  # noqa: BLE001 - a webhook's failure never ends the sweep
            if not self.warned:
                print(
                    f"warning: the notify webhook failed ({e}); the sweep goes on", file=sys.stderr
                )
                self.warned = True
