"""Hot reload end to end: a real cage process, its modules edited on disk, driven over HTTP."""

from __future__ import annotations

import http.client
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from conftest import CageProcess, http_config, http_request, module_source, wait_until, write_file

Writer = Callable[[Path, str], object]
WRITERS: dict[str, Writer] = {"editor_save": write_file, "in_place": Path.write_text}


def text_handler(text: str) -> str:
    """interface_<name>.py answering `text`."""
    return module_source(f"""
        def process_request(request, response):
            response["content"] = {text!r}
            response["headers"]["content-type"] = "text/plain"
    """, ["process_request"])


# The handler that delegates to work.py, so work.py is the module being reloaded.
WORK_HANDLER = module_source("""
    def process_request(request, response):
        response["content"] = pmnc.work.handle(request)
        response["headers"]["content-type"] = "text/plain"
""", ["process_request"])


def work_module(text: str, eof: bool = True) -> str:
    return module_source(f"""
        def handle(request):
            return {text!r}
    """, ["handle"], eof=eof)


def get(port: int, path: str = "/") -> tuple[int, str]:
    status, _, body = http_request(port, path, timeout=10.0)
    return status, body.decode()


def serves(port: int, text: str) -> bool:
    return get(port) == (200, text)


def work_cage(cage_process: Callable[..., CageProcess], **kwargs: object) -> tuple[CageProcess, int]:
    """A cage whose http handler returns pmnc.work.handle(request); work.py answers "v1"."""
    files = {"interface_http.py": WORK_HANDLER, "work.py": work_module("v1")}
    cage = cage_process(interfaces={"http": http_config()}, files=files, **kwargs)
    port = cage.port()
    assert get(port) == (200, "v1")
    return cage, port


# --- edits are served ----------------------------------------------------------------------


@pytest.mark.parametrize("writer", WRITERS.values(), ids=WRITERS.keys())
def test_edited_handler_is_served(cage_process, writer: Writer) -> None:
    cage = cage_process(interfaces={"http": http_config()})
    port = cage.port()
    assert serves(port, "Hello, world !")
    handler = cage.cage_dir / "interface_http.py"
    for n, text in enumerate(["second version", "third, a longer version"], start=2):
        writer(handler, text_handler(text))
        wait_until(lambda text=text: serves(port, text), timeout=3.0, message=f"{text!r} served")
        cage.wait_for_log(rf"module interface_http has been reloaded \(version {n}\)", timeout=1.0)


def test_new_module_is_served_at_once(cage_process) -> None:
    cage = cage_process(interfaces={"http": http_config()}, files={"interface_http.py": WORK_HANDLER})
    port = cage.port()
    status, body = get(port)
    assert status == 500 and "ModuleNotFoundError" in body
    write_file(cage.cage_dir / "work.py", work_module("fresh work"))
    assert get(port) == (200, "fresh work")  # the very next request: no reload wait for a new module


def test_file_saved_during_its_first_load_is_picked_up(cage_process) -> None:
    slow_to_load = module_source("""
        import time

        pmnc.log.message("work.py v1 is being loaded")
        time.sleep(0.5)  # the module body takes a while: the file is saved again meanwhile

        def handle(request):
            return "v1"
    """, ["handle"])
    cage = cage_process(interfaces={"http": http_config()},
                        files={"interface_http.py": WORK_HANDLER, "work.py": slow_to_load})
    port = cage.port()
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(get, port)
        cage.wait_for_log("work.py v1 is being loaded")
        write_file(cage.cage_dir / "work.py", work_module("v2"))
        assert first.result(timeout=10.0) == (200, "v1")  # it was loaded from what was read
    wait_until(lambda: serves(port, "v2"), timeout=3.0, message="the file saved meanwhile served")


def test_broken_version_is_refused_and_old_keeps_serving(cage_process) -> None:
    cage, port = work_cage(cage_process)
    write_file(cage.cage_dir / "work.py", work_module("v2") + "def broken(:\n")
    refused = cage.wait_for_log(r"module work version 2 refused, version 1 keeps serving: (.*)", timeout=3.0)
    assert "SyntaxError" in refused.group(1)
    assert get(port) == (200, "v1")
    write_file(cage.cage_dir / "work.py", work_module("v2 fixed"))
    wait_until(lambda: serves(port, "v2 fixed"), timeout=3.0, message="the fixed version served")


def test_version_without_eof_is_not_loaded(cage_process) -> None:
    cage, port = work_cage(cage_process)
    work = cage.cage_dir / "work.py"
    write_file(work, work_module("half written", eof=False))
    refused = cage.wait_for_log(r"module work version 2 refused, version 1 keeps serving: (.*)", timeout=3.0)
    assert "# EOF" in refused.group(1)
    assert get(port) == (200, "v1")
    with work.open("a") as f:  # the rest of the file arrives
        f.write("# EOF\n")
    wait_until(lambda: serves(port, "half written"), timeout=3.0, message="the completed file served")


def test_new_module_without_eof_fails_the_request(cage_process) -> None:
    cage = cage_process(interfaces={"http": http_config()},
                        files={"interface_http.py": WORK_HANDLER, "work.py": work_module("v1", eof=False)})
    port = cage.port()
    status, body = get(port)
    assert status == 500 and "ModuleFileIncompleteError" in body
    assert get(port)[0] == 500  # refused again while the file is unchanged
    write_file(cage.cage_dir / "work.py", work_module("v1"))
    assert get(port) == (200, "v1")


# --- calls in flight -------------------------------------------------------------------------


def test_request_in_flight_finishes_on_the_old_version(cage_process) -> None:
    slow = module_source("""
        import time

        def handle(request):
            pmnc.log.message("old version is working")
            time.sleep(1.0)
            return "old"
    """, ["handle"])
    cage = cage_process(interfaces={"http": http_config()},
                        files={"interface_http.py": WORK_HANDLER, "work.py": slow})
    port = cage.port()
    with ThreadPoolExecutor(1) as pool:
        in_flight = pool.submit(get, port)
        cage.wait_for_log("old version is working")
        write_file(cage.cage_dir / "work.py", work_module("new"))
        assert in_flight.result(timeout=10.0) == (200, "old")
    cage.wait_for_log(r"module work has been reloaded \(version 2\)", timeout=3.0)
    assert get(port) == (200, "new")
    log = cage.log_text()
    assert log.index("reloading module work") < log.index("module work has been reloaded")


def test_late_answer_gets_504_at_the_deadline(cage_process) -> None:
    sleepy = module_source("""
        import time

        def process_request(request, response):
            if request["url"] == "/slow":
                time.sleep(2.0)
            response["content"] = "done"
            response["headers"]["content-type"] = "text/plain"
    """, ["process_request"])
    cage = cage_process(interfaces={"http": http_config()}, files={"interface_http.py": sleepy},
                        request_timeout=1.0)
    port = cage.port()
    assert get(port) == (200, "done")
    began = time.monotonic()
    status, _ = get(port, "/slow")
    took = time.monotonic() - began
    assert status == 504
    assert 0.8 <= took <= 1.7, took
    cage.wait_for_log(r"has not been answered in 1\.0s, the client gets 504", timeout=1.0)
    cage.wait_for_log(r"finished [\d.]+s after its deadline, the result is discarded", timeout=3.0)
    assert get(port) == (200, "done")


def test_earliest_deadline_runs_first(cage_process) -> None:
    """One worker: a request queued later but due sooner (a shorter interface timeout) runs first."""
    handler = module_source("""
        import os
        import time

        def process_request(request, response):
            if request["url"] == "/block":
                pmnc.log.message("the only worker is blocked")
                release = os.path.join(__cage_dir__, "release")
                while not os.path.exists(release) and pmnc.request.remain > 0.5:
                    time.sleep(0.01)
            with open(os.path.join(__cage_dir__, "order.txt"), "a") as f:
                f.write(f"{pmnc.request.interface} {request['url']}\\n")
            response["content"] = "ran"
            response["headers"]["content-type"] = "text/plain"
    """, ["process_request"])
    cage = cage_process(interfaces={"relaxed": http_config(request_timeout=10.0),
                                    "urgent": http_config(request_timeout=5.0)},
                        files={"interface_relaxed.py": handler, "interface_urgent.py": handler},
                        thread_count=1, log_level="DEBUG")
    relaxed, urgent = cage.port("relaxed"), cage.port("urgent")
    queued = r"WorkerPool worker .*: queued RQ-"
    with ThreadPoolExecutor(4) as pool:
        answers = [pool.submit(get, relaxed, "/block")]
        cage.wait_for_log("the only worker is blocked")
        answers += [pool.submit(get, relaxed, f"/late-{n}") for n in (1, 2)]
        cage.wait_for_log(queued)  # both relaxed requests wait in the queue
        answers.append(pool.submit(get, urgent, "/urgent"))
        cage.wait_for_log(queued, count=2)
        (cage.cage_dir / "release").touch()
        assert [a.result(timeout=10.0) for a in answers] == [(200, "ran")] * 4
    order = (cage.cage_dir / "order.txt").read_text().splitlines()
    assert order[:2] == ["relaxed /block", "urgent /urgent"], order
    assert sorted(order[2:]) == ["relaxed /late-1", "relaxed /late-2"], order


# --- reloading under load ------------------------------------------------------------------


@pytest.mark.parametrize("module, writer", [
    ("interface_http", write_file), ("work", write_file), ("work", Path.write_text),
], ids=["handler-editor_save", "work-editor_save", "work-in_place"])
def test_no_failed_requests_while_rewritten_under_load(cage_process, module: str, writer: Writer) -> None:
    def label(n: int) -> str:
        return f"version {n}" + "!" * (n % 3)  # sizes vary as real edits do

    def version(n: int) -> str:
        return text_handler(label(n)) if module == "interface_http" else work_module(label(n))

    files = {"interface_http.py": WORK_HANDLER, "work.py": version(0)}
    if module == "interface_http":
        files = {"interface_http.py": version(0)}
    cage = cage_process(interfaces={"http": http_config()}, files=files)
    port = cage.port()
    texts = {label(n) for n in range(11)}
    stop = threading.Event()
    per_client: list[list[tuple[int, str]]] = [[] for _ in range(4)]

    def client(answers: list[tuple[int, str]], keep_alive: bool) -> None:
        connection: http.client.HTTPConnection | None = None
        while not stop.is_set():
            try:
                if keep_alive:
                    connection = connection or http.client.HTTPConnection("127.0.0.1", port, timeout=10.0)
                    connection.request("GET", "/")
                    response = connection.getresponse()
                    answer = (response.status, response.read().decode())
                    if response.will_close:
                        connection.close()
                        connection = None
                else:
                    answer = get(port)
            except Exception as e:
                answer, connection = (0, repr(e)), None
            answers.append(answer)
        if connection is not None:
            connection.close()

    def served(text: str) -> int:
        return sum(answer == (200, text) for answers in per_client for answer in answers[-400:])

    threads = [threading.Thread(target=client, args=(answers, n % 2 == 0), daemon=True)
               for n, answers in enumerate(per_client)]
    for thread in threads:
        thread.start()
    try:
        wait_until(lambda: served(label(0)) >= 40, timeout=10.0, message="version 0 served under load")
        path = cage.cage_dir / f"{module}.py"
        for n in range(1, 11):
            writer(path, version(n))
            # each version serves a while under load before the next edit: 2-3 s in all
            wait_until(lambda n=n: served(label(n)) >= 120, timeout=10.0, message=f"{label(n)!r} served under load")
    finally:
        stop.set()
        for thread in threads:
            thread.join(15.0)
    answers = [a for answers in per_client for a in answers]
    failed = [a for a in answers if a[0] != 200 or a[1] not in texts]
    assert not failed, failed[:5]
    for answers in per_client:  # once a client got a new version, it never gets an older one
        numbers = [int(text.split()[1].rstrip("!")) for _, text in answers]
        assert numbers == sorted(numbers)
