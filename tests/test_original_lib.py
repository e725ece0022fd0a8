"""The original's plain-library import paths (lib/typecheck.py, exc_string, expected,
interlocked_*, shared_lock, pmnc.timeout, pmnc.threads): code written for Pythomnic3k
imports them unchanged and gets pmnc's own classes underneath.

No `from __future__ import annotations`: the annotations below are the original's
predicates, evaluated where each function is defined.
"""

import subprocess
import sys
import textwrap
import threading
import traceback
from collections.abc import Callable
from typing import Any

import exc_string as exc_string_module
import interlocked_counter
import interlocked_factory
import interlocked_queue
import pmnc.errors
import pytest
import shared_lock
import typecheck as typecheck_module
from conftest import CageProcess, http_config, http_request, module_source
from exc_string import exc_string, trace_string
from expected import expected
from pmnc import request as rq
from pmnc.request import Request
from pmnc.threads import HeavyThread, LightThread
from pmnc.timeout import Timeout
from typecheck import (
    InputParameterError,
    ReturnValueError,
    TypeCheckSpecificationError,
    by_regex,
    nothing,
    optional,
    typecheck,
    typecheck_with_exceptions,
    with_attr,
)

# --- typecheck -------------------------------------------------------------------------------


def test_the_old_path_is_pmncs_checker_and_errors() -> None:
    assert typecheck_module.InputParameterError is pmnc.errors.InputParameterError
    assert typecheck_module.ReturnValueError is pmnc.errors.ReturnValueError
    assert typecheck_module.TypeCheckSpecificationError is pmnc.errors.TypeCheckSpecificationError
    assert typecheck_module.typecheck is pmnc.typecheck.typecheck
    assert typecheck_module.optional is pmnc.typecheck.optional

    @typecheck
    def foo(s: by_regex("^[0-9]+$")) -> str:  # type: ignore[valid-type]
        return s

    with pytest.raises(pmnc.errors.InputParameterError) as info:
        foo("12a")
    assert str(info.value) == "foo() has got an incompatible value for s: 12a"


def test_star_import_gives_the_originals_names() -> None:
    names: dict[str, Any] = {}
    exec("from typecheck import *", names)
    assert {"typecheck", "typecheck_with_exceptions", "optional", "with_attr", "by_regex", "callable",
            "anything", "nothing", "tuple_of", "list_of", "set_of", "dict_of", "one_of", "either",
            "TypeCheckError", "TypeCheckSpecificationError", "InputParameterError", "ReturnValueError",
            "disable"} <= set(names)


def test_typecheck_with_exceptions_raises_the_given_classes() -> None:
    @typecheck_with_exceptions(input_parameter_error=MemoryError)
    def custom_input_error(x: int) -> None:
        pass

    @typecheck_with_exceptions(return_value_error=LookupError)
    def custom_return_error() -> str:
        return 1  # type: ignore[return-value]

    with expected(MemoryError("custom_input_error() has got an incompatible value for x: foo")):
        custom_input_error("foo")
    with expected(LookupError("custom_return_error() has returned an incompatible value: 1")):
        custom_return_error()
    custom_input_error(1)


def test_typecheck_with_exceptions_refuses_what_is_not_an_exception_class() -> None:
    with expected(InputParameterError("typecheck_with_exceptions() has got an incompatible value "
                                      "for input_parameter_error: foo")):
        typecheck_with_exceptions(input_parameter_error="foo")  # type: ignore[arg-type]
    with expected(InputParameterError, ".*return_value_error: 10"):
        typecheck_with_exceptions(return_value_error=10)  # type: ignore[arg-type]
    with expected(TypeError):
        typecheck_with_exceptions(MemoryError)  # type: ignore[misc]


def test_wrapping_twice_keeps_the_first_wrappers_errors() -> None:
    """pmnc's loader wraps every exported function: it must not hide a cage's own error class."""
    @typecheck_with_exceptions(input_parameter_error=MemoryError)
    def f(x: int) -> int:
        return x

    assert typecheck(f) is f
    with expected(MemoryError):
        typecheck(f)("1")


def test_nothing_means_no_value_returned() -> None:
    @typecheck
    def foo(x: Any = None) -> nothing:
        return x

    assert foo() is None
    with expected(ReturnValueError("foo() has returned an incompatible value: ")):
        foo("")


def test_predicates_answer_directly_and_through_check() -> None:
    assert with_attr("__class__")(int) and with_attr("__class__").check(int)
    assert not with_attr("foo")(int) and not with_attr("foo").check(int)
    assert by_regex("^123$")("123") and by_regex("^123$").check("123")
    assert not by_regex("^abc$")("abc\n")
    assert not by_regex(b"^abc$")("abc")

    @typecheck
    def foo(a: typecheck_module.callable, *, k: optional(int) = None) -> typecheck_module.callable:  # type: ignore[valid-type]
        return a

    assert foo(len) is len
    with expected(InputParameterError("foo() has got an incompatible value for a: 1")):
        foo(1)
    with expected(InputParameterError("foo() has got an incompatible value for k: 1")):
        foo(len, k="1")


def test_specification_errors_use_the_originals_words() -> None:
    with expected(TypeCheckSpecificationError("invalid typecheck for a")):
        @typecheck
        def foo(a: 10) -> None:  # type: ignore[valid-type]
            pass

    with expected(TypeCheckSpecificationError("invalid typecheck for return")):
        @typecheck
        def bar() -> 10:  # type: ignore[valid-type]
            pass

    with expected(TypeCheckSpecificationError("the default value for b is incompatible with its typecheck")):
        @typecheck
        def ax_b2(a: Any, b: int = "two") -> None:  # type: ignore[assignment]
            pass


def test_disable_leaves_functions_wrapped_afterwards_unchecked() -> None:
    """In a process of its own: disable() is for good, as in the original."""
    script = textwrap.dedent("""
        import typecheck
        from typecheck import typecheck as check, InputParameterError

        @check
        def before(x: int): return x

        typecheck.disable()

        @check
        def after(x: int): return x

        assert after("not an int") == "not an int"
        try:
            before("not an int")
        except InputParameterError:
            print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert done.stdout.strip() == "ok", done.stderr


# --- expected --------------------------------------------------------------------------------


def test_expected_by_type_by_message_prefix_and_by_regex() -> None:
    with expected(IndexError):
        ()[0]
    with expected(IndexError("tuple index out of range")):
        ()[0]
    with expected(IndexError("tuple index")):  # a prefix is enough
        ()[0]
    with expected(IndexError, "tuple.*range"):  # a regex must match the whole message
        ()[0]
    with expected(Exception("tuple index out of range")):  # a base class catches its subclasses
        ()[0]
    with expected(IndexError), expected(KeyError), expected(RuntimeError):
        ()[0]


def test_expected_fails_when_nothing_is_raised() -> None:
    with pytest.raises(AssertionError) as info, expected(IndexError):
        (1,)[0]
    assert str(info.value) == "expected IndexError to have been thrown"


def test_expected_lets_another_message_or_type_through() -> None:
    with pytest.raises(IndexError, match=r"^tuple index out of range$"), expected(IndexError("range out of tuple")):
        ()[0]
    with pytest.raises(IndexError), expected(IndexError, "tuple range"):
        ()[0]
    with pytest.raises(KeyError), expected(IndexError):
        {}["foo"]


def test_expected_refuses_other_arguments_with_its_usage() -> None:
    with pytest.raises(Exception) as info:
        expected("foo")  # type: ignore[arg-type]
    assert str(info.value) == 'usage: with expected(Exception[, "regex"]): or with expected(Exception("text")):'


# --- exc_string ------------------------------------------------------------------------------


def test_exc_string_is_one_line_innermost_first() -> None:
    assert exc_string() == ""
    assert exc_string_module.exc_string is pmnc.errors.exc_string

    def bar() -> None:
        raise KeyError("x")

    def foo() -> None:
        bar()

    try:
        foo()
    except KeyError:
        text = exc_string()
    assert text.startswith("KeyError(\"'x'\") in bar() (test_original_lib.py:")
    assert " <- foo() (test_original_lib.py:" in text
    assert text.endswith(" <- test_exc_string_is_one_line_innermost_first() "
                         f"(test_original_lib.py:{foo.__code__.co_firstlineno + 4})")  # the line of foo()


def test_exc_string_of_an_exception_whose_str_fails() -> None:
    class FooError(Exception):
        def __str__(self) -> str:
            raise Exception("str fails")

    try:
        raise FooError(123)
    except FooError:
        assert exc_string().startswith('FooError("") in ')


def test_trace_string_skips_the_innermost_frames() -> None:
    def foo() -> str:
        return trace_string(skip=2)

    def bar() -> str:
        return foo()

    def biz() -> str:
        return bar()

    text = biz()
    line = biz.__code__.co_firstlineno + 1
    assert text.startswith(f"biz() (test_original_lib.py:{line}) <- test_trace_string_skips_the_innermost_frames() ")
    assert trace_string().startswith("test_trace_string_skips_the_innermost_frames() (test_original_lib.py:")


def test_trace_string_of_a_given_traceback() -> None:
    def bar() -> None:
        raise ValueError

    try:
        bar()
    except ValueError as e:
        text = trace_string(tb=traceback.extract_tb(e.__traceback__))
    assert text.startswith("bar() (test_original_lib.py:")
    assert text.count(" <- ") == 1


# --- interlocked helpers ---------------------------------------------------------------------


def test_interlocked_counter_counts_and_wraps() -> None:
    counter = interlocked_counter.InterlockedCounter()
    assert [counter.next() for _ in range(5)] == [0, 1, 2, 3, 4]
    for modulo in (1, 2, 7):
        wrapping = interlocked_counter.InterlockedCounter(modulo)
        assert [wrapping.next() for _ in range(20)] == [i % modulo for i in range(20)]


def test_interlocked_counter_gives_each_number_once_across_threads() -> None:
    counter = interlocked_counter.InterlockedCounter()
    got: list[list[int]] = [[] for _ in range(8)]
    threads = [threading.Thread(target=lambda mine: mine.extend(counter.next() for _ in range(2000)), args=(mine,))
               for mine in got]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(n for mine in got for n in mine) == list(range(16000))


def test_interlocked_queue_push_pop_and_timeouts() -> None:
    que = interlocked_queue.InterlockedQueue()
    que.push(123)
    assert que.pop() == 123
    que.push(456)
    assert que.pop(0.0) == 456
    que.push(789)
    assert que.pop(0.1) == 789
    assert que.pop(0.0) is None
    assert que.pop(0.05) is None
    assert que.pop(-1.0) is None
    que.push(1)
    que.push(2)
    assert len(que) == 2
    assert (que.pop(), que.pop(), len(que)) == (1, 2, 0)


def test_interlocked_queue_wakes_a_waiting_pop() -> None:
    que = interlocked_queue.InterlockedQueue()
    got: list[Any] = []
    waiter = threading.Thread(target=lambda: got.append(que.pop(30.0)))
    waiter.start()
    que.push("A")
    waiter.join()
    assert got == ["A"]


def test_interlocked_priority_queue_pops_the_smallest_first() -> None:
    que = interlocked_queue.InterlockedPriorityQueue()
    for item in (2, 3, 1):
        que.push(item)
    assert len(que) == 3
    assert [que.pop(), que.pop(), que.pop()] == [1, 2, 3]
    assert que.pop(0.0) is None


def test_a_request_pops_an_interlocked_queue_within_its_deadline(attach: Callable[[float], Request]) -> None:
    que = interlocked_queue.InterlockedQueue()
    request = attach(5.0)
    que.push("item")
    assert rq.current() is request
    assert request.pop(que) == "item"
    assert attach(0.0).pop(que) is None  # no time left: one look, nothing there


def test_interlocked_factory_as_the_originals_self_test() -> None:
    class Foo:
        pass

    ilf = interlocked_factory.InterlockedFactory(Foo)
    assert ilf.count == 0
    with expected(AssertionError):
        ilf.wait(1.0)  # only a stopped factory may be waited for
    made = ilf.create()
    assert made is not None
    f, n = made
    assert isinstance(f, Foo) and n == ilf.count == 1
    with expected(TypeError):
        ilf.create("will throw")
    assert ilf.count == 1
    ilf.stop()
    with expected(AssertionError):
        ilf.stop()
    assert ilf.create() is None
    assert not ilf.wait(0.05)
    assert not ilf.wait(0.0)
    assert ilf.destroyed() == ilf.count == 0
    assert ilf.wait(1.0)
    assert not ilf.wait(0.0)  # zero never waits, as in the original


def test_interlocked_factory_wait_ends_when_the_last_object_goes() -> None:
    ilf = interlocked_factory.InterlockedFactory(object)
    ilf.create()
    ilf.stop()
    destroyer = threading.Thread(target=ilf.destroyed)
    destroyer.start()
    assert ilf.wait(30.0)
    destroyer.join()


# --- shared_lock -----------------------------------------------------------------------------


def in_thread(work: Callable[[], Any]) -> Any:
    """What `work` returns when run on another thread."""
    result: list[Any] = []
    thread = threading.Thread(target=lambda: result.append(work()))
    thread.start()
    thread.join(30.0)
    return result[0]


def test_shared_lock_simple_and_recursive() -> None:
    lck = shared_lock.SharedLock("TestLock")
    assert lck.name == "TestLock"
    assert lck.acquire(0.0)
    assert lck.acquire()  # its owner re-enters
    lck.release()
    assert not in_thread(lambda: lck.acquire_shared(0.0))  # still held once
    lck.release()
    assert lck.acquire_shared(0.0)
    assert lck.acquire_shared()
    lck.release_shared()
    lck.release_shared()
    assert in_thread(lambda: lck.acquire(0.0))  # free again (that thread ends holding it)


def test_shared_lock_release_without_acquire() -> None:
    lck = shared_lock.SharedLock()
    name = threading.current_thread().name
    with expected(AssertionError(f"thread {name} has not acquired the lock")):
        lck.release()
    with expected(AssertionError(f"thread {name} has not acquired the lock")):
        lck.release_shared()


def test_shared_lock_exclusive_keeps_others_out_and_shared_lets_them_in() -> None:
    lck = shared_lock.SharedLock()
    assert lck.acquire()
    assert not in_thread(lambda: lck.acquire(0.05))
    assert not in_thread(lambda: lck.acquire_shared(0.0))
    lck.release()
    assert lck.acquire_shared()
    assert in_thread(lambda: lck.acquire_shared(0.0))
    assert not in_thread(lambda: lck.acquire(0.0))


def test_shared_lock_same_thread_upgrades_and_downgrades() -> None:
    lck = shared_lock.SharedLock("UpgLock")
    assert lck.acquire_shared()  # sh -> ex <- ex <- sh
    assert lck.acquire(0.0)  # the only holder upgrades at once
    lck.release()
    assert not in_thread(lambda: lck.acquire(0.0))  # the shared hold is still there
    lck.release_shared()
    assert lck.acquire()  # ex -> sh <- ex <- sh
    assert lck.acquire_shared()
    lck.release()
    assert in_thread(lambda: lck.acquire_shared(0.0))
    lck.release_shared()


def test_shared_lock_failed_upgrade_gives_the_shared_hold_back() -> None:
    lck = shared_lock.SharedLock()
    other_holds, other_may_go = threading.Event(), threading.Event()

    def other_reader() -> None:
        assert lck.acquire_shared()
        other_holds.set()
        other_may_go.wait(30.0)
        lck.release_shared()

    reader = threading.Thread(target=other_reader)
    reader.start()
    other_holds.wait(30.0)
    assert lck.acquire_shared()
    assert not lck.acquire(0.05)  # another reader is in: no upgrade
    lck.release_shared()  # still ours: no AssertionError
    other_may_go.set()
    reader.join()
    assert lck.acquire(0.0)
    lck.release()


def test_a_request_takes_a_shared_lock_within_its_deadline(attach: Callable[[float], Request]) -> None:
    lck = shared_lock.SharedLock()
    assert attach(5.0).acquire_shared(lck)
    lck.release_shared()
    in_thread(lambda: lck.acquire())  # held exclusive by a thread that has ended
    assert not attach(0.05).acquire_shared(lck)


# --- pmnc.timeout ----------------------------------------------------------------------------


def test_timeout_counts_down_and_resets() -> None:
    with expected(InputParameterError("__init__() has got an incompatible value for timeout: 1")):
        Timeout(1)  # type: ignore[arg-type]
    t = Timeout(30.0)
    assert t.timeout == 30.0
    assert 0.0 < t.remain <= 30.0
    assert not t.expired
    t.reset(0.0)
    assert t.expired and t.remain == 0.0 and t.timeout == 0.0
    t.reset(30.0)
    assert not t.expired
    t.reset()
    assert t.remain > 0.0


def test_timeout_waits_for_an_event() -> None:
    event = threading.Event()
    t = Timeout(0.05)
    assert not t.wait(event)
    assert t.expired
    event.set()
    assert not t.wait(event)  # expired: no waiting at all, even for a set event
    assert Timeout(30.0).wait(event)
    nothing_to_wait_for = Timeout(0.05)
    assert not nothing_to_wait_for.wait()
    assert nothing_to_wait_for.expired


def test_timeout_pops_a_queue() -> None:
    que = interlocked_queue.InterlockedQueue()
    t = Timeout(0.05)
    assert t.pop(que) is None
    assert t.expired
    t.reset(30.0)
    que.push(1)
    assert t.pop(que) == 1
    assert not t.expired


# --- pmnc.threads ----------------------------------------------------------------------------


def test_heavy_thread_runs_until_stopped_with_an_infinite_request() -> None:
    seen: dict[str, Any] = {}

    def ht_proc() -> None:
        me = threading.current_thread()
        assert isinstance(me, HeavyThread)
        seen["infinite"] = rq.current().infinite
        params = rq.current().parameters
        params["count"] = 0
        while not me.stopped(0.01):
            params["count"] += 1

    ht = HeavyThread(target=ht_proc)
    assert not ht.daemon
    ht.start()
    assert not ht.stopped()
    ht.stop()  # asks, then joins
    assert not ht.is_alive()
    assert ht.stopped()
    assert seen["infinite"] is True
    assert ht._request is not None and ht._request.parameters["count"] >= 0


def test_heavy_thread_may_stop_itself() -> None:
    def stop_myself() -> None:
        me = threading.current_thread()
        assert isinstance(me, HeavyThread)
        me.stop()  # does not join itself

    ht = HeavyThread(target=stop_myself)
    ht.start()
    ht.join(30.0)
    assert not ht.is_alive() and ht.stopped()


def test_light_thread_is_a_daemon() -> None:
    done = threading.Event()
    lt = LightThread(target=done.set)
    assert lt.daemon
    lt.start()
    assert done.wait(30.0)


# --- in a real cage --------------------------------------------------------------------------

GREETER = module_source("""
    import typecheck; from typecheck import typecheck_with_exceptions, by_regex

    def greet(name: by_regex("^[a-z]+$")) -> str:
        return "hello " + name

    @typecheck_with_exceptions(input_parameter_error=LookupError)
    def lookup(key: str) -> str:
        return key
""", ["greet", "lookup"])

ORIGINAL_HANDLER = module_source("""
    import typecheck; from typecheck import InputParameterError
    from exc_string import exc_string, trace_string
    from expected import expected
    from interlocked_queue import InterlockedQueue
    from interlocked_counter import InterlockedCounter
    from shared_lock import SharedLock
    from pmnc.timeout import Timeout
    from pmnc.threads import HeavyThread

    def process_request(request, response):
        with expected(InputParameterError("greet() has got an incompatible value for name: 123")):
            pmnc.greeter.greet(123)
        with expected(LookupError("lookup() has got an incompatible value for key: 1")):
            pmnc.greeter.lookup(1)
        queue = InterlockedQueue()
        counter = InterlockedCounter()
        worker = HeavyThread(target=lambda: queue.push(counter.next()))
        worker.start()
        got = Timeout(5.0).pop(queue)
        worker.stop()
        lock = SharedLock()
        assert pmnc.request.acquire_shared(lock)
        lock.release_shared()
        response["content"] = pmnc.greeter.greet("world") + " " + str(got)
        response["headers"]["content-type"] = "text/plain"
""", ["process_request"])


def test_an_original_style_cage_runs_unchanged(cage_process: Callable[..., CageProcess]) -> None:
    cage = cage_process(interfaces={"http": http_config()},
                        files={"interface_http.py": ORIGINAL_HANDLER, "greeter.py": GREETER})
    status, _, body = http_request(cage.port("http"), "/")
    assert (status, body) == (200, b"hello world 0"), body
