"""Requests and deadlines: lib/pmnc/request.py."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Iterator

import pytest
from pmnc import request as rq
from pmnc.errors import DeadlineError
from pmnc.request import Request


class Clock:
    """A monotonic clock that moves only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr(rq, "monotonic", fake)
    return fake


@pytest.fixture(autouse=True)
def detached() -> Iterator[None]:
    rq.attach(None)
    yield
    rq.attach(None)


def finite(timeout: float = 5.0, **kwargs: object) -> Request:
    return Request(timeout=timeout, interface="http", protocol="http", **kwargs)  # type: ignore[arg-type]


# --- identity ----------------------------------------------------------------------


def test_unique_id_format_and_local_time() -> None:
    before = time.strftime("%Y%m%d%H%M%S")
    request = finite()
    after = time.strftime("%Y%m%d%H%M%S")
    match = re.fullmatch(r"RQ-(\d{14})-([0-9A-F]{12})", request.unique_id)
    assert match, request.unique_id
    assert before <= match.group(1) <= after


def test_unique_ids_differ() -> None:
    ids = {finite().unique_id for _ in range(200)}
    assert len(ids) == 200


def test_new_unique_id_prefix() -> None:
    assert re.fullmatch(r"RT-\d{14}-[0-9A-F]{12}", rq.new_unique_id("RT"))


def test_finite_request_needs_interface_and_protocol() -> None:
    with pytest.raises(ValueError):
        Request(timeout=1.0)
    with pytest.raises(ValueError):
        Request(timeout=None, interface="http", protocol="http")
    with pytest.raises(ValueError):
        Request(timeout=1.0, interface="http")


def test_protocol_rewritable_only_when_set() -> None:
    request = finite()
    request.protocol = "https"
    assert request.protocol == "https"
    infinite = Request(timeout=None)
    with pytest.raises(AttributeError):
        infinite.protocol = "http"
    assert infinite.protocol is None


# --- timing -------------------------------------------------------------------------


def test_remain_counts_down_and_clamps_at_zero(clock: Clock) -> None:
    request = finite(5.0)
    assert request.remain == 5.0
    assert not request.expired
    clock.advance(2.0)
    assert request.remain == 3.0
    assert request.elapsed == 2.0
    clock.advance(4.0)
    assert request.remain == 0.0
    assert request.expired
    assert request.expired_for == 1.0


def test_expired_exactly_at_the_deadline(clock: Clock) -> None:
    request = finite(1.0)
    clock.advance(1.0)
    assert request.expired
    assert request.remain == 0.0
    assert request.expired_for == 0.0


def test_remain_is_settable(clock: Clock) -> None:
    request = finite(5.0)
    clock.advance(4.0)
    request.remain = 10.0
    assert request.remain == 10.0
    clock.advance(9.0)
    assert not request.expired
    request.remain = 0.0
    assert request.expired


def test_setting_remain_revives_an_expired_request(clock: Clock) -> None:
    request = finite(1.0)
    clock.advance(5.0)
    assert request.expired
    request.remain = 2.0
    assert not request.expired
    assert request.remain == 2.0


def test_expires_in_is_a_test_that_never_moves_the_deadline(clock: Clock) -> None:
    request = finite(1.0)
    assert not request.expires_in(0.5)
    clock.advance(0.6)
    assert request.expires_in(0.5)
    assert not request.expired
    assert not Request(timeout=None).expires_in(86400.0)


def test_deadline_in_moves_the_deadline(clock: Clock) -> None:
    request = finite(5.0)
    request.deadline_in(0.5)
    assert request.remain == 0.5
    clock.advance(0.5)
    assert request.expired


def test_epoch_deadline_is_wall_clock(clock: Clock) -> None:
    request = finite(30.0)
    assert request.epoch_deadline == pytest.approx(time.time() + 30.0, abs=1.0)


def test_infinite_request_never_expires(clock: Clock) -> None:
    request = Request(timeout=None)
    assert request.infinite
    clock.advance(1e9)
    assert not request.expired
    with pytest.raises(DeadlineError):
        _ = request.remain
    with pytest.raises(DeadlineError):
        _ = request.expired_for
    assert request.epoch_deadline is None
    assert not finite().infinite


def test_infinite_request_remain_error_is_a_timeout_error() -> None:
    with pytest.raises(TimeoutError):
        _ = Request(timeout=None).remain


# --- description ------------------------------------------------------------------------


def test_description_format(clock: Clock) -> None:
    request = finite(5.0, description="GET /index")
    tail = "RQ-" + request.unique_id[-4:]
    assert request.description == f"{tail} (GET /index) via http +5.0s"
    clock.advance(1.25)
    assert request.description == f"{tail} (GET /index) via http +3.8s"


def test_description_after_expiry_is_negative(clock: Clock) -> None:
    request = finite(1.0)
    clock.advance(2.5)
    assert request.description == f"RQ-{request.unique_id[-4:]} via http -1.5s"


def test_describe_sets_the_text(clock: Clock) -> None:
    request = finite(2.0)
    assert request.description == f"RQ-{request.unique_id[-4:]} via http +2.0s"
    request.describe("POST /api")
    assert request.description == f"RQ-{request.unique_id[-4:]} (POST /api) via http +2.0s"


def test_infinite_request_has_no_description() -> None:
    request = Request(timeout=None)
    request.describe("something")
    assert request.description is None


def test_repr() -> None:
    request = finite(5.0)
    assert repr(request).startswith(f"<Request {request.unique_id} via http remain=")
    assert repr(Request(timeout=None)).endswith(" infinite>")


def test_log_level_is_top_of_stack() -> None:
    request = finite(log_levels=[4, 6])
    assert request.log_level == 6
    request.log_levels.pop()
    assert request.log_level == 4
    assert finite().log_level is None


# --- ordering -------------------------------------------------------------------------------


def test_sort_key_earliest_deadline_first_infinite_last(clock: Clock) -> None:
    late = finite(9.0)
    infinite = Request(timeout=None)
    early = finite(1.0)
    middle = finite(5.0)
    clock.advance(0.5)
    soon = finite(0.1)
    ordered = sorted([late, infinite, early, middle, soon], key=Request.sort_key)
    assert ordered == [soon, early, middle, late, infinite]


def test_equal_deadlines_keep_arrival_order(clock: Clock) -> None:
    requests = [finite(1.0) for _ in range(5)] + [Request(timeout=None) for _ in range(3)]
    assert sorted(reversed(requests), key=Request.sort_key) == requests


# --- serialisation --------------------------------------------------------------------------


def test_to_dict_wire_form() -> None:
    request = finite(30.0, description="desc", log_levels=[6],
                     parameters={"auth_tokens": {"user": "u"}, "_private": 1, 5: "non-str key"})
    d = request.to_dict()
    assert set(d) == {"unique_id", "deadline", "interface", "protocol", "description", "log_levels", "parameters"}
    assert d["unique_id"] == request.unique_id
    assert d["deadline"] == pytest.approx(time.time() + 30.0, abs=1.0)
    assert d["interface"] == "http" and d["protocol"] == "http"
    assert d["description"] == "desc"
    assert d["log_levels"] == [6]
    assert d["parameters"] == {"auth_tokens": {"user": "u"}}


def test_round_trip_keeps_identity_and_deadline() -> None:
    request = finite(30.0, description="desc", log_levels=[5, 6], parameters={"a": 1})
    copy = Request.from_dict(request.to_dict())
    assert copy.unique_id == request.unique_id
    assert (copy.interface, copy.protocol) == ("http", "http")
    assert (copy.description or "").startswith(f"RQ-{request.unique_id[-4:]} (desc) via http +")
    assert copy.log_levels == [5, 6]
    assert copy.parameters == {"a": 1}
    assert copy.remain == pytest.approx(request.remain, abs=0.5)


def test_from_dict_deadline_is_min_of_timeout_and_time_left() -> None:
    d = finite(30.0).to_dict()
    assert Request.from_dict(d, timeout=2.0).remain == pytest.approx(2.0, abs=0.5)
    assert Request.from_dict(d, timeout=100.0).remain == pytest.approx(30.0, abs=0.5)


def test_from_dict_zero_timeout_counts_as_unset() -> None:
    d = finite(30.0).to_dict()
    assert Request.from_dict(d, timeout=0.0).remain == pytest.approx(30.0, abs=0.5)


def test_from_dict_of_an_expired_request_is_expired() -> None:
    d = finite(30.0).to_dict()
    d["deadline"] = time.time() - 5.0
    copy = Request.from_dict(d)
    assert copy.expired
    assert copy.remain == 0.0


def test_to_dict_refused_for_infinite_request() -> None:
    with pytest.raises(DeadlineError):
        Request(timeout=None).to_dict()


def test_round_trip_does_not_share_parameters_or_levels() -> None:
    request = finite(parameters={"a": 1}, log_levels=[4])
    copy = Request.from_dict(request.to_dict())
    copy.parameters["b"] = 2
    copy.log_levels.append(7)
    assert request.parameters == {"a": 1}
    assert request.log_levels == [4]


# --- waits bounded by the deadline ------------------------------------------------------------


def test_wait_returns_true_when_event_is_set() -> None:
    event = threading.Event()
    event.set()
    assert finite(5.0).wait(event)
    assert Request(timeout=None).wait(event)


def test_wait_gives_up_at_the_deadline() -> None:
    request = finite(0.05)
    started = time.monotonic()
    assert not request.wait(threading.Event())
    assert 0.03 <= time.monotonic() - started < 2.0


def test_wait_on_expired_request_returns_at_once(clock: Clock) -> None:
    request = finite(1.0)
    clock.advance(2.0)
    started = time.monotonic()
    assert not request.wait(threading.Event())
    assert time.monotonic() - started < 1.0


def test_wait_wakes_when_another_thread_sets_the_event() -> None:
    event = threading.Event()
    threading.Timer(0.01, event.set).start()
    assert finite(10.0).wait(event)


def test_infinite_request_waits_until_the_event() -> None:
    event = threading.Event()
    threading.Timer(0.01, event.set).start()
    assert Request(timeout=None).wait(event)


def test_acquire_free_lock() -> None:
    lock = threading.Lock()
    assert finite(5.0).acquire(lock)
    lock.release()
    assert Request(timeout=None).acquire(lock)
    lock.release()


def test_acquire_gives_up_at_the_deadline() -> None:
    lock = threading.Lock()
    lock.acquire()
    try:
        assert not finite(0.05).acquire(lock)
    finally:
        lock.release()


def test_acquire_on_expired_request_does_not_wait(clock: Clock) -> None:
    lock = threading.Lock()
    lock.acquire()
    request = finite(1.0)
    clock.advance(5.0)
    started = time.monotonic()
    try:
        assert not request.acquire(lock)
    finally:
        lock.release()
    assert time.monotonic() - started < 1.0


# --- the current request ------------------------------------------------------------------------


def test_current_without_attach_is_a_stable_infinite_request() -> None:
    first = rq.current()
    assert first.infinite
    assert rq.current() is first


def test_attach_returns_previous_and_sets_current() -> None:
    original = rq.current()
    request = finite()
    assert rq.attach(request) is original
    assert rq.current() is request
    assert rq.attach(original) is request
    assert rq.current() is original


def test_attached_restores_previous_even_on_error() -> None:
    outer = rq.current()
    request = finite()
    with pytest.raises(KeyError), rq.attached(request) as inside:
        assert inside is request
        assert rq.current() is request
        raise KeyError("boom")
    assert rq.current() is outer


def test_attached_nests() -> None:
    a, b = finite(), finite()
    with rq.attached(a):
        with rq.attached(b):
            assert rq.current() is b
        assert rq.current() is a


def test_current_is_per_thread() -> None:
    request = finite()
    seen: list[Request] = []
    with rq.attached(request):
        thread = threading.Thread(target=lambda: seen.append(rq.current()))
        thread.start()
        thread.join()
    assert seen[0] is not request
    assert seen[0].infinite


def test_fake_request_attaches() -> None:
    request = rq.fake_request(3.0)
    assert rq.current() is request
    assert request.interface == "__fake__"
    assert request.remain == pytest.approx(3.0, abs=0.5)
    infinite = rq.fake_request()
    assert rq.current() is infinite and infinite.infinite


def test_to_dict_copies_parameters_deeply() -> None:
    tokens: dict[str, str] = {}
    d = finite(30.0, parameters={"auth_tokens": tokens}).to_dict()
    tokens["user"] = "later"
    assert d["parameters"] == {"auth_tokens": {}}


def test_from_dict_reads_what_an_older_pmnc_wrote() -> None:
    d = finite(30.0).to_dict()
    d["id"] = d.pop("unique_id")
    assert Request.from_dict(d).unique_id == d["id"]


# --- the original's waits and log levels ------------------------------------------------------


class _Queue:
    """What Request.pop needs of a queue: pop(timeout) -> item or None."""

    def __init__(self, *items: object) -> None:
        self.items, self.timeouts = list(items), []  # type: ignore[var-annotated]

    def pop(self, timeout: float | None = None) -> object:
        self.timeouts.append(timeout)
        return self.items.pop(0) if self.items else None


def test_pop_waits_no_longer_than_the_deadline(clock: Clock) -> None:
    queue = _Queue("first")
    request = finite(2.0)
    assert request.pop(queue) == "first"
    clock.advance(1.5)
    assert request.pop(queue) is None
    assert queue.timeouts == [2.0, 0.5]
    assert Request(timeout=None).pop(_Queue()) is None


def test_acquire_shared_within_the_deadline() -> None:
    from pmnc.rwlock import SharedLock
    lock = SharedLock()
    assert lock.acquire_exclusive(1.0)
    got: list[bool] = []

    def other() -> None:
        rq.attach(finite(0.2))
        got.append(rq.current().acquire_shared(lock))

    thread = threading.Thread(target=other)
    thread.start()
    thread.join(5.0)
    assert got == [False]  # the exclusive holder kept it past the other's deadline
    lock.release_exclusive()
    request = finite(1.0)
    assert request.acquire_shared(lock) and request.acquire_shared_fast(lock)
    lock.release_shared()
    lock.release_shared()


def test_log_level_stack() -> None:
    request = finite(5.0)
    assert request.log_level is None
    request.push_log_level(3)
    request.push_log_level(6)
    assert request.log_level == 6
    request.pop_log_level()
    assert request.log_level == 3
    request.pop_log_level()
    with pytest.raises(IndexError):
        request.pop_log_level()


def test_fake_request_as_the_original() -> None:
    request = rq.fake_request(5.0)
    assert rq.current() is request
    assert (request.interface, request.protocol) == ("__fake__", "n/a")
    assert request.parameters == {"auth_tokens": {}}
    assert rq.fake_request().infinite and isinstance(rq.current(), rq.InfiniteRequest)


def test_self_test_is_seen_by_every_request_of_the_process(monkeypatch: pytest.MonkeyPatch) -> None:
    assert finite(1.0).self_test is None
    monkeypatch.setattr(Request, "_self_test", "mod")
    assert finite(1.0).self_test == "mod" and Request(timeout=None).self_test == "mod"


def test_the_intakes_constructor_makes_the_same_request_as_the_keywords() -> None:
    """Request.begun (the intake's, once per request) sets every field Request(...) sets, alike."""
    keywords = rq.Request(interface="http", protocol="http", timeout=5.0, parameters={"a": 1}, start=100.0)
    begun = rq.Request.begun("http", "http", 5.0, {"a": 1}, 100.0)
    assert vars(begun).keys() == vars(keywords).keys()
    assert {k: v for k, v in vars(begun).items() if k != "sequence"} == \
        {k: v for k, v in vars(keywords).items() if k != "sequence"}
    assert begun.sequence > keywords.sequence and begun.deadline == 105.0
