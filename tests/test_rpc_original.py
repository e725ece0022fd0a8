"""Cage-to-cage calls written the original's way, between real cage processes.

Errors: a failure of a call to another cage is an RPCError / ResourceError as
the original's code expects, and a remote ValueError is still a ValueError.
Module names: a cage's module may be named like anything the call chain
holds (`store`, `target`, `call`, ...). Config: the keys the original's rpc
interface and resource had are honoured, or refused saying where they live now.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from conftest import Cluster, config_source, http_config, http_request, module_source
from pmnc.errors import ConfigError
from pmnc.schema import Key, Schema
from test_rpc import RUNNER_HANDLER, WORK, Runner, start_runner, start_worker

CATCH = """
    from pmnc.errors import RemoteError, ResourceError, RPCError
    caught = []
    for kind in KINDS:
        try:
            CALL
        except Exception as e:
            if isinstance(e, kind):
                caught.append(kind.__name__)
    result = caught
"""


def catches(call: str, *kinds: str) -> str:
    """A snippet: `call` run once per kind in `kinds`, `result` the kinds that caught it."""
    return CATCH.replace("KINDS", f"[{', '.join(kinds)}]").replace("CALL", call)


# --- item 5: errors --------------------------------------------------------------------------------


def test_a_remote_error_is_both_an_rpc_error_and_its_own_type(cluster: Cluster) -> None:
    start_worker(cluster)
    runner = start_runner(cluster)

    call = 'pmnc("worker").work.fail("bad value 42")'
    assert runner.result(catches(call, "ValueError", "RPCError", "ResourceError")) == \
        ["ValueError", "RPCError", "ResourceError"]
    # it reads as the remote error did: its type's name, its message, its traceback there
    error = runner.error(call)
    assert error["type"] == "builtins.ValueError" and error["message"] == "bad value 42"
    assert "in fail" in error["remote_traceback"]
    assert runner.result(f"""
        try:
            {call}
        except Exception as e:
            result = type(e.remote).__name__, str(e.remote), e.recoverable
    """) == ("ValueError", "bad value 42", False)

    # a type the caller does not rebuild is a RemoteError naming it, and an RPCError too
    assert runner.result(catches('pmnc("worker").work.fail_mine("mine")', "RPCError", "RemoteError")) \
        == ["RPCError", "RemoteError"]


def test_a_remote_os_error_keeps_its_fields(cluster: Cluster, tmp_path: Path) -> None:
    cluster.cage("worker", {"files.py": module_source("""
        def read(path):
            with open(path) as f:
                return f.read()
    """, ["read"])})
    cluster.start("worker")
    runner = start_runner(cluster)
    missing = str(tmp_path / "missing.txt")

    assert runner.result(f"""
        from pmnc.errors import RPCError
        try:
            pmnc("worker").files.read({missing!r})
        except FileNotFoundError as e:
            result = isinstance(e, OSError), isinstance(e, RPCError), e.errno, e.filename
    """) == (True, True, 2, missing)


def test_errors_through_a_chain_of_cages_and_reverse_calls(cluster: Cluster) -> None:
    start_worker(cluster)
    cluster.cage("relay", {"relay.py": module_source("""
        def relay(message):
            return pmnc("worker").work.fail(message)
    """, ["relay"])})
    cluster.start("relay")
    dmz = start_runner(cluster, "dmz")
    cluster.cage("lan", {"work.py": WORK,
                         "config_interface_revrpc.py": config_source({"protocol": "revrpc",
                                                                      "source_cages": ("dmz",)})},
                 interfaces=("revrpc",))
    cluster.start("lan")

    # runner -> relay -> worker: the relay let the ValueError through, and it is still one here
    assert dmz.result(catches('pmnc("relay").relay.relay("far")', "ValueError", "RPCError")) == \
        ["ValueError", "RPCError"]
    assert dmz.error('pmnc("relay").relay.relay("far")')["message"] == "far"
    assert dmz.result(catches('pmnc("lan:reverse").work.fail("reversed")', "ValueError", "RPCError",
                              "ResourceError")) == ["ValueError", "RPCError", "ResourceError"]


def test_http_answers_as_before_when_a_handler_lets_a_remote_error_through(cluster: Cluster) -> None:
    start_worker(cluster)
    cluster.cage("front", {"config_interface_http.py": config_source(http_config()),
                           "interface_http.py": module_source("""
        def process_request(request, response):
            if request["url"] == "/fail":
                pmnc("worker").work.fail("bad id")
            pmnc("worker").work.sleep(5.0)
    """, ["process_request"])}, interfaces=("rpc", "http"), request_timeout=1.5)
    port = cluster.start("front").port()

    status, _, body = http_request(port, "/fail")
    assert status == 500 and b'ValueError("bad id")' in body
    status, _, _ = http_request(port, "/slow")
    assert status == 504


# --- item 7: a module may have any name ----------------------------------------------------------------


# what the chain's objects hold, and names of the resource lifecycle (commit, name, config, ...)
NAMES = ["store", "target", "channels", "cage", "create", "execute", "call", "poll", "post",
         "commit", "name", "config", "connect", "prepare", "ops", "module"]


def test_modules_named_like_attributes_of_the_call_chain_are_reached(cluster: Cluster) -> None:
    cluster.cage("worker", {f"{name}.py": module_source(f"""
        def f(x):
            return {name!r}, x
    """, ["f"]) for name in NAMES})
    cluster.start("worker")
    runner = start_runner(cluster)

    answers = runner.result(f"""
        result = {{}}
        for name in {NAMES!r}:
            xa = pmnc.transaction.create()
            getattr(xa.rpc__worker, name).f(1)
            result[name] = [getattr(pmnc("worker"), name).f(0),
                            xa.execute()[0],
                            getattr(pmnc.transaction.rpc__worker, name).f(2)]
    """)
    assert answers == {name: [(name, 0), (name, 1), (name, 2)] for name in NAMES}


def test_retried_calls_reach_modules_named_like_attributes_of_the_chain(cluster: Cluster) -> None:
    cluster.cage("worker", {f"{name}.py": module_source(f"""
        def f(x):
            pmnc.log.message("ran {name} " + str(x))
    """, ["f"]) for name in NAMES}, interfaces=("rpc", "retry"))
    worker = cluster.start("worker")
    cluster.cage("runner", {"config_interface_http.py": config_source(http_config()),
                            "interface_http.py": RUNNER_HANDLER}, interfaces=("rpc", "http", "retry"))
    runner = Runner(cluster.start("runner"))
    rt_ids = runner.result(f"""
        result = []
        for name in {NAMES!r}:
            xa = pmnc.transaction.create()
            getattr(xa.pmnc("worker", queue="retry"), name).f(1)
            result.extend(xa.execute())
            result.append(getattr(pmnc("worker", queue="retry"), name).f(2))
    """)
    assert len(rt_ids) == 2 * len(NAMES) and all(rt_id.startswith("RT-") for rt_id in rt_ids)
    for name in NAMES:
        worker.wait_for_log(f"ran {name} 1")
        worker.wait_for_log(f"ran {name} 2")


# --- item 3: the original's rpc config keys ---------------------------------------------------------


def test_moved_keys_are_refused_saying_where_they_live_now() -> None:
    keys = Schema(size=Key(1, int), moved={"old_size": "config_other.py, as size", "gone": "it was never needed"})
    with pytest.raises(ConfigError) as info:
        keys.read({"size": 2, "old_size": 3, "gone": 1}, "config_x.py")
    assert str(info.value) == ("config_x.py: key old_size now lives in config_other.py, as size; "
                               "key gone is not used by pmnc: it was never needed")
    # an extension keeps what its base moved, and may take a moved key back
    assert "old_size" in keys.extend(more=Key()).moved
    assert keys.extend(old_size=Key(0, int)).read({"old_size": "5"}, "config_x.py") == {"size": 1, "old_size": 5}


ORIGINAL_INTERFACE = {"protocol": "rpc", "random_port": -63000, "max_connections": 100,
                      "broadcast_address": ("0.0.0.0/255.255.255.255", 12480), "flock_id": "DEFAULT",
                      "marshaling_methods": ("msgpack", "pickle"), "max_packet_size": 1048576}


def test_the_originals_interface_config_is_refused_key_by_key(cluster: Cluster) -> None:
    cluster.cage("worker", {"work.py": WORK, "config_interface_rpc.py": config_source(ORIGINAL_INTERFACE)})
    worker = cluster.start("worker", ready=False)
    worker.wait_for_log(r"config_interface_rpc\.py: key broadcast_address now lives in config_cluster\.py; "
                        r"key flock_id now lives in config_cluster\.py; "
                        r"key max_packet_size now lives in config_cluster\.py, as max_frame_size")


def test_random_port_and_marshaling_methods_are_honoured(cluster: Cluster) -> None:
    config = {k: v for k, v in ORIGINAL_INTERFACE.items()
              if k not in ("broadcast_address", "flock_id", "max_packet_size")}
    start_worker_with = {"work.py": WORK, "config_interface_rpc.py": config_source(config)}
    cluster.cage("worker", start_worker_with)
    worker = cluster.start("worker")
    port = int(worker.wait_for_log(r"interface rpc listens on ssl://[\d.]+:(\d+)/").group(1))
    assert 63000 <= port <= 63999
    pickle_lines = worker.log_text().count("pmnc refuses pickle from other cages")
    assert pickle_lines == 1 and "use_pickle=True in config_cluster.py" in worker.log_text()

    runner = start_runner(cluster)
    assert runner.result('result = pmnc("worker").work.handle(21)') == 42


def _resource_config(**keys: Any) -> str:
    return config_source({"protocol": "rpc", **keys})


def test_resource_keys_are_honoured_or_refused(cluster: Cluster) -> None:
    runner = start_runner(cluster)
    cluster.shared("config_resource_rpc.py", _resource_config(
        discovery_timeout=0.5, marshaling_methods=("msgpack", "pickle"), pool__idle_timeout=120.0))
    error = runner.error('pmnc("nowhere").work.handle(1)')
    assert error["message"] == "no instance of cage nowhere has been found in 0.5s"
    assert runner.result(catches('pmnc("nowhere").work.handle(1)', "ResourceError")) == ["ResourceError"]

    assert runner.process.log_text().count("config_resource_rpc.py: marshaling_methods: pmnc refuses pickle") == 1

    cluster.cage("ported", {"config_resource_rpc.py": _resource_config(
        exact_locations={"worker": "ssl://1.2.3.4:5678/"}, multiple_timeout_allowance=0.5)})
    ported = start_runner(cluster, "ported")
    assert ported.result(catches('pmnc("worker").work.handle(1)', "ResourceError")) == ["ResourceError"]
    message = ported.error('pmnc("worker").work.handle(1)')["message"]
    assert 'key exact_locations now lives in config_cluster.py, as exact_locations = {"cage": ("host:port", ...)}' \
        in message
    assert "key multiple_timeout_allowance is not used by pmnc" in message
