"""The App in-process: supervision, health, reload — with real components and sockets."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import pytest
from prometheus_client.parser import text_string_to_metric_families
from structlog.testing import capture_logs

from gateway.component import Backoff, Component, Health
from gateway.config import load_settings
from gateway.daemon.app import App, changed_keys
from gateway.systemd import Notifier
from tests.conftest import ConfigFile

FAST = Backoff(initial_s=0.05, cap_s=0.2)


class Crashing(Component):
    """Raises on its first ``crashes`` runs, then works (beats) like a healthy part."""

    name = "crashing"
    critical = False

    def __init__(self, crashes: int) -> None:
        self.crashes = crashes
        self.runs = 0

    async def run(self, health: Health) -> None:
        self.runs += 1
        if self.runs <= self.crashes:
            raise RuntimeError(f"probe socket exploded (run {self.runs})")
        while True:
            health.beat()
            await asyncio.sleep(0.02)


class Counting(Component):
    """A critical part that counts its beats, like the relay bank would."""

    name = "lights"
    critical = True
    heartbeat_timeout_s = 0.3

    def __init__(self) -> None:
        self.beats = 0
        self.hang = asyncio.Event()

    async def run(self, health: Health) -> None:
        while not self.hang.is_set():
            self.beats += 1
            health.beat()
            await asyncio.sleep(0.02)
        await asyncio.Event().wait()  # stuck: no more beats, never returns


def http_get(port: int, path: str) -> tuple[int, dict[str, object]]:
    """GET a JSON endpoint of the app (in a thread, the loop keeps running)."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


async def wait_for(predicate: Callable[[], bool], within_s: float = 5.0) -> None:
    """Poll until ``predicate`` holds; fail the test after ``within_s``."""
    deadline = asyncio.get_running_loop().time() + within_s
    while not predicate():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail("condition not reached in time")
        await asyncio.sleep(0.02)


@asynccontextmanager
async def running(app: App) -> AsyncIterator[asyncio.Task[int]]:
    """Run the app in a task; stop it (as SIGTERM would) when the block ends."""
    task = asyncio.create_task(app.run())
    await wait_for(lambda: app.started.is_set() or task.done())
    if task.done():
        task.result()  # raise what stopped it
    try:
        yield task
    finally:
        app.request_stop()
        assert await asyncio.wait_for(task, 5) == 0


async def test_crashing_component_is_restarted_and_others_keep_running(
    config_file: ConfigFile,
) -> None:
    """A part that raises is restarted with backoff and reported; the lights' loop never
    stops meanwhile and /healthz stays 200, because the crashing part is not critical."""
    crashing, lights = Crashing(crashes=3), Counting()
    app = App(load_settings(config_file.path), extra_components=[crashing, lights], backoff=FAST)
    with capture_logs() as logs:
        async with running(app):
            await wait_for(lambda: crashing.runs == 4)
            beats_before = lights.beats
            await asyncio.sleep(0.2)
            assert lights.beats > beats_before
            health = app.healths["crashing"]
            assert health.restarts == 3
            assert health.last_error == "RuntimeError: probe socket exploded (run 3)"
            status, body = await asyncio.to_thread(http_get, config_file.web_port, "/healthz")
            assert status == 200
            components = body["components"]
            assert isinstance(components, dict)
            assert components["crashing"]["restarts"] == 3
    crashed = [entry for entry in logs if entry["event"] == "component.crashed"]
    assert len(crashed) == 3
    assert all(entry["target"] == "crashing" for entry in crashed)


async def test_hung_critical_component_makes_healthz_503(config_file: ConfigFile) -> None:
    """A critical part that stops making progress turns /healthz to 503 and names it."""
    lights = Counting()
    app = App(load_settings(config_file.path), extra_components=[lights], backoff=FAST)
    async with running(app):
        assert (await asyncio.to_thread(http_get, config_file.web_port, "/healthz"))[0] == 200
        lights.hang.set()
        await wait_for(lambda: bool(app.problems()))
        status, body = await asyncio.to_thread(http_get, config_file.web_port, "/healthz")
        assert status == 503
        assert body["status"] == "unhealthy"
        problems = body["problems"]
        assert isinstance(problems, list)
        assert "lights hung" in problems[0]


async def test_metrics_are_prometheus_text(config_file: ConfigFile) -> None:
    """/metrics answers in Prometheus text format with the components' health."""
    app = App(load_settings(config_file.path), backoff=FAST)
    async with running(app):

        def fetch() -> tuple[str, str]:
            url = f"http://127.0.0.1:{config_file.web_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.headers["Content-Type"], response.read().decode()

        content_type, text = await asyncio.to_thread(fetch)
    assert content_type.startswith("text/plain")
    assert 'vg_component_healthy{component="system",critical="false"} 1.0' in text
    assert "vg_uptime_seconds" in text
    assert 'vg_outbox_depth{stream="events"}' in text
    assert "vg_link_connected 0.0" in text  # the test config names no running broker


async def test_metrics_cover_relays_pa_hotspots_and_commands(config_file: ConfigFile) -> None:
    """/metrics, parsed by prometheus-client's own parser, carries the relays, the PA,
    the hotspots and the commands by type, source and status, as the state shows them."""
    app = App(load_settings(config_file.path), backoff=FAST)
    async with running(app):
        assert app.dispatcher is not None
        on = await app.dispatcher.dispatch(
            {"id": "m-1", "type": "relay.set", "args": {"relay": "yard", "on": True}}, "web"
        )
        assert on.status == "done"
        bad = await app.dispatcher.dispatch(
            {"id": "m-2", "type": "relay.set", "args": {"relay": "moon", "on": True}}, "web"
        )
        assert bad.status == "rejected"
        await wait_for(lambda: "hotspots" in app.state.all() and "pa" in app.state.all())

        def fetch() -> str:
            url = f"http://127.0.0.1:{config_file.web_port}/metrics"
            with urllib.request.urlopen(url, timeout=5) as response:
                return str(response.read().decode())

        text = await asyncio.to_thread(fetch)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    assert samples[("vg_relay_on", (("relay", "yard"),))] == 1.0
    assert samples[("vg_relay_manual", (("relay", "yard"),))] == 1.0
    assert samples[("vg_relay_on", (("relay", "amplifier"),))] == 0.0
    done = (("source", "web"), ("status", "done"), ("type", "relay.set"))
    rejected = (("source", "web"), ("status", "rejected"), ("type", "relay.set"))
    assert samples[("vg_commands_total", done)] == 1.0
    assert samples[("vg_commands_total", rejected)] == 1.0
    assert samples[("vg_outbox_commits_total", ())] >= 1
    # The event loop's lag, for the field: a p99 well under a second on an idle daemon.
    assert 0 <= samples[("vg_loop_lag_seconds", (("quantile", "0.99"),))] < 1.0
    assert samples[("vg_pa_volume", ())] == app.settings.pa.volume
    assert samples[("vg_pa_device", (("state", "off"),))] == 1.0  # the null backend
    hall_states = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "vg_hotspot_state" and ("hotspot", "hall") in labels
    }
    assert sum(hall_states.values()) == 1.0  # exactly one current state


async def test_reload_applies_live_keys_and_reports_restart_keys(config_file: ConfigFile) -> None:
    """A valid changed file is applied: the name and log level at once; a new web port is
    logged as needing a restart (the socket stays where it is)."""
    app = App(load_settings(config_file.path), config_path=config_file.path, backoff=FAST)
    async with running(app):
        new_port = config_file.web_port + 1
        config_file.write(
            {
                "Thử": "Thử mới",
                f"port = {config_file.web_port}\n\n[log]": f"port = {new_port}\n\n[log]",
            },
            log_level="DEBUG",
        )
        with capture_logs() as logs:
            assert await app.reload() is True
        assert app.settings.gateway.name == "Nhà văn hóa thôn Thử mới"
        assert app.settings.log.level == "DEBUG"
        assert app.restart_required == ["web.port"]
        reloaded = next(entry for entry in logs if entry["event"] == "config.reloaded")
        assert reloaded["applied"] == ["gateway.name", "log.level"]
        assert reloaded["restart_required"] == ["web.port"]
        status, body = await asyncio.to_thread(http_get, config_file.web_port, "/healthz")
        assert status == 200
        assert body["name"] == "Nhà văn hóa thôn Thử mới"
        assert body["restart_required"] == ["web.port"]


async def test_reload_with_invalid_file_keeps_the_old_one(config_file: ConfigFile) -> None:
    """A broken file on reload is rejected: every problem is logged with its key and the
    running configuration stays as it was."""
    app = App(load_settings(config_file.path), config_path=config_file.path, backoff=FAST)
    before = app.settings
    async with running(app):
        config_file.write(
            {'id = "test.gw1"': 'id = "bad/id"', "pin = 22": "pin = 17"}, extra="[nope]\n"
        )
        with capture_logs() as logs:
            assert await app.reload() is False
    assert app.settings is before
    problems = {entry["key"] for entry in logs if entry["event"] == "config.reload_problem"}
    assert problems == {"gateway.id", "relays", "nope"}
    assert any(entry["event"] == "config.reload_rejected" for entry in logs)


def test_changed_keys_lists_nested_differences(config_file: ConfigFile) -> None:
    """The reload diff names each changed key by its dotted path, relays included."""
    old = load_settings(config_file.path)
    config_file.write({"Đèn sân": "Đèn sân mới", "pin = 22": "pin = 24"})
    new = load_settings(config_file.path)
    assert changed_keys(old, new) == ["relays.amplifier.pin", "relays.yard.label"]


async def test_notifier_without_socket_is_silent() -> None:
    """Outside systemd (no NOTIFY_SOCKET) notifying does nothing and raises nothing."""
    notifier = Notifier("")
    assert not notifier.enabled
    assert notifier.ready("x") is False
    notifier.close()


@pytest.mark.parametrize("demo", [True, False])
def test_demo_state_dir_is_temporary_unless_configured(config_file: ConfigFile, demo: bool) -> None:
    """--demo keeps state in a temporary folder unless the file names one."""
    app = App(load_settings(None, demo=True), demo=demo)
    if demo:
        assert "village-gateway-demo-" in str(app.settings.gateway.state_dir)
    else:
        assert str(app.settings.gateway.state_dir) == "/var/lib/village-gateway"
    configured = App(load_settings(config_file.path, demo=True), demo=True)
    assert configured.settings.gateway.state_dir == config_file.state_dir
