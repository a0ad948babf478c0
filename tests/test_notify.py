"""Notifications (orchestrator/control/notify.py): Slack-compatible payloads delivered to a
webhook on loopback, at most one per kind of event per interval with the rest summed, and a
webhook that hangs or refuses never holding the sweep up; the sweep file's `notify` section
refused like any bad key."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from orchestrator.control.notify import Notifier
from search_spaces import SpecError, load_spec
from search_spaces.spec import NotifySpec
from tests.conftest import free_port


class Hook:
    """A webhook on loopback recording what it is sent; `delay_s` makes it hang."""

    def __init__(self, delay_s: float = 0.0) -> None:
        self.received: list[dict] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                time.sleep(delay_s)
                outer.received.append(json.loads(body))
                self.send_response(200)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def hook():
    h = Hook()
    yield h
    h.close()


def test_each_kind_is_posted_as_slack_json(hook):
    n = Notifier(hook.url, sweep="s", spec=NotifySpec(webhook_env="X"))
    n.send("trial_failed", "trial t1 failed for good, diverged: loss is NaN — http://ui/run")
    n.send("finished", "sweep s finished: 4 trial(s) finished")
    n.close()
    by_kind = {p["event"]: p for p in hook.received}
    assert set(by_kind) == {"trial_failed", "finished"}
    assert by_kind["finished"] == {
        "text": "sweep s finished: 4 trial(s) finished", "sweep": "s", "event": "finished",
        "count": 1,
    }  # fmt: skip


def test_one_message_per_kind_per_interval_the_rest_summed(hook):
    now = [0.0]
    n = Notifier(hook.url, sweep="s", spec=NotifySpec(webhook_env="X"), clock=lambda: now[0])
    for i in range(13):
        n.send("trial_failed", f"trial t{i} failed")
    time.sleep(2.5)  # the thread has seen them: the first went out, 12 wait for the window
    assert [p["count"] for p in hook.received] == [1]
    n.send("failed", "sweep s failed")  # another kind is not held back by this one
    time.sleep(2.5)
    assert [p["event"] for p in hook.received] == ["trial_failed", "failed"]
    now[0] = 61.0  # the window opens: the 12 are summed into one message
    time.sleep(2.5)
    summed = hook.received[-1]
    assert summed["count"] == 12 and "12 × trial_failed" in summed["text"]
    assert "t1 failed" in summed["text"] and "and 2 more" in summed["text"]
    n.close()


def test_events_left_out_of_the_file_are_not_sent(hook):
    n = Notifier(hook.url, sweep="s", spec=NotifySpec(webhook_env="X", events=("finished",)))
    n.send("trial_failed", "not this one")
    n.send("finished", "this one")
    n.close()
    assert [p["event"] for p in hook.received] == ["finished"]


@pytest.mark.parametrize("kind", ["hangs", "refuses"])
def test_a_webhook_that_hangs_or_refuses_costs_the_sweep_at_most_its_timeout(kind, capsys):
    slow = Hook(delay_s=30.0) if kind == "hangs" else None
    url = slow.url if slow else f"http://127.0.0.1:{free_port()}/hook"
    spec = NotifySpec(webhook_env="X", timeout_s=1.0)
    t0 = time.monotonic()
    n = Notifier(url, sweep="s", spec=spec)
    n.send("trial_failed", "one")  # blocks nothing: the caller is the sweep's driver
    n.send("finished", "two")
    sent = time.monotonic() - t0
    n.close()
    total = time.monotonic() - t0
    if slow:
        slow.close()
    assert sent < 0.1 and total < 2 * spec.timeout_s + 2.0, (sent, total)
    assert capsys.readouterr().err.count("the notify webhook failed") == 1


def test_the_sweep_file_names_a_variable_that_must_be_set(monkeypatch):
    monkeypatch.delenv("CCT_TEST_HOOK", raising=False)
    cases = {
        "notify.webhook_env=CCT_TEST_HOOK": "$CCT_TEST_HOOK is not set here",
        "notify.webhook_env=https://hooks.example/x": "not the URL",
        "notify.events=[finished, nope]": "choose from finished",
    }
    for override, message in cases.items():
        with pytest.raises(SpecError, match="notify") as e:
            load_spec(None, [override])
        assert any(message in m for m in e.value.errors), e.value.errors
    monkeypatch.setenv("CCT_TEST_HOOK", "http://127.0.0.1:9/x")
    spec = load_spec(None, ["notify.webhook_env=CCT_TEST_HOOK"])
    assert spec.notify.webhook_env == "CCT_TEST_HOOK"
    assert "http" not in json.dumps(spec.to_dict())  # the URL itself is never written down
