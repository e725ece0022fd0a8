#!/usr/bin/env python3
###############################################################################
#
# An application module written the way Pythomnic3k code was written: each
# function below uses one family of the original's idioms and returns what
# it saw, for interface_http to show. Running this file directly
# (python3 idioms.py) runs its self-test in a copy of the cage.
#
###############################################################################

__all__ = [ "settings", "deadline", "queues", "locks", "interfaces", "modules", "compiled",
            "notebook", "retried", "remote", "raw_state", "stop_cage" ]

###############################################################################

if __name__ == "__main__": # run by hand: the framework's lib is two folders up
    import os; import sys
    main_module_dir = os.path.dirname(os.path.abspath(sys.modules["__main__"].__file__))
    sys.path.insert(0, os.path.normpath(os.path.join(main_module_dir, "..", "..", "lib")))

import typecheck; from typecheck import typecheck, by_regex, InputParameterError
import exc_string; from exc_string import exc_string
import expected; from expected import expected
import interlocked_counter; from interlocked_counter import InterlockedCounter
import interlocked_queue; from interlocked_queue import InterlockedQueue
import pmnc.timeout; from pmnc.timeout import Timeout
import pmnc.threads; from pmnc.threads import HeavyThread, LightThread
import pmnc.request; from pmnc.request import fake_request
import pmnc.resource_pool; from pmnc.resource_pool import RPCError, ResourceError, TransactionExecutionError

###############################################################################

note_key = by_regex("^[a-z]{1,16}$")
_stamps = InterlockedCounter()

###############################################################################
# config files: this module's own, another module's, keys it has not got

def settings():
    return dict(greeting = pmnc.config.get("greeting"),
                batch_size = pmnc.config.get("batch_size"),
                missing = pmnc.config.get("no_such_key"),
                missing_with_default = pmnc.config.get("no_such_key", "fallback"),
                keys = sorted(pmnc.config.copy().keys()),
                thread_count = pmnc.config_interfaces.get("thread_count"),
                own_get = pmnc.config_idioms.get("batch_size"),
                http_protocol = pmnc.config_interface_http.copy()["protocol"])

###############################################################################
# the request: its deadline asked about, never moved by asking

def deadline():
    request = pmnc.request
    before = request.remain
    answers = dict(within_an_hour = request.expires_in(3600.0),
                   within_a_tenth = request.expires_in(0.1))
    answers.update(left_after_asking = request.remain > 0.5 * before,
                   description = request.description,
                   keys = sorted(request.to_dict().keys()))
    request.push_log_level(7) # NOISE for this request only
    answers["pushed_level"] = request.log_level
    request.pop_log_level()
    return answers

###############################################################################
# what requests share: queues, locks, private thread pools

def queues():
    queue = pmnc.shared_queues.get("work")
    assert queue is pmnc.shared_queues.get("work")
    pool = pmnc.shared_pools.get_private_thread_pool("feeders", 2)

    def feed(count):
        for i in range(count):
            queue.push("item {0:d}".format(i))
        return count

    fed = pool.enqueue(pmnc.request, feed, (pmnc.config.get("batch_size"), ), {}).wait()
    items = [ pmnc.request.pop(queue) for i in range(fed) ]

    local = InterlockedQueue() # the plain queue, waited on with a Timeout
    LightThread(target = lambda: local.push(_stamps.next())).start()
    stamp = Timeout(5.0).pop(local)

    return dict(fed = fed, items = items, pool = [ pool.name, pool.size ], stamp = isinstance(stamp, int))

def locks():
    lock = pmnc.shared_locks.get("ledger")
    outcome = {}

    def reader():
        fake_request(0.2) # this thread's own request: its deadline bounds the wait
        outcome["reader_got_it"] = pmnc.request.acquire_shared(lock)

    assert pmnc.request.acquire(lock) # exclusive: the reader cannot come in
    try:
        thread = HeavyThread(target = reader)
        thread.start(); thread.join(5.0)
    finally:
        lock.release()

    assert pmnc.request.acquire_shared(lock) and pmnc.request.acquire_shared_fast(lock)
    lock.release_shared(); lock.release_shared()
    return outcome

###############################################################################

def interfaces():
    http = pmnc.interfaces.get_interface("http")
    return dict(http = http is not None, http_name = getattr(http, "name", None),
                unknown = pmnc.interfaces.get_interface("no_such_interface"))

###############################################################################
# the module loader as the original had it

def modules():
    properties = {}
    pmnc.tools.ping(__module_properties = properties)
    tally = pmnc.tools.Tally(10)
    tally.add(5)
    try:
        pmnc.partial.LIMIT
    except Exception as e:
        constant = exc_string(e)
    else:
        constant = "reachable"
    return dict(name = __name__,
                through_own_name = pmnc.__getattr__(__name__).settings()["batch_size"],
                caller = pmnc.tools.caller(),
                route = pmnc.tools.route.orders.today("/api"),
                version = properties.get("version"),
                containing_module = tally.__containing_module__.__name__,
                tally = tally.add(0),
                dynamic = pmnc.dynamic.whatever(1, 2),
                lazy_function = pmnc.partial.works(),
                lazy_constant = constant,
                hooked = pmnc.tools.hooked(),
                greeting = pmnc.greeting.text())

def compiled():
    return pmnc.compiled.answer()

###############################################################################
# the cage's own resource, in pmnc transactions

@typecheck
def notebook(key: note_key, value: str):
    xa = pmnc.transaction.create()
    xa.notebook.write(key, value)
    xa.execute()

    xa = pmnc.transaction.create()
    xa.notebook.write("", "refused")
    try:
        xa.execute()
    except (ResourceError, TransactionExecutionError) as e:
        refused = exc_string(e)
    else:
        refused = None

    xa = pmnc.transaction.create()
    xa.notebook.read(key)
    return dict(read_back = xa.execute()[0], refused = refused)

###############################################################################
# calls that leave this request: retried later, or to another cage

def retried(marker: str):
    return pmnc(queue = "retry").jobs.note(marker)

def remote(amount: int):
    caught = []
    for kind in (ValueError, RPCError, ResourceError):
        try:
            pmnc("peer").checks.validate(amount)
        except kind as e:
            caught.append([ kind.__name__, str(e) ])
    return dict(caught = caught, accepted = pmnc("peer").checks.validate(-amount))

###############################################################################
# what pmnc does not have, and stopping

def raw_state():
    pmnc.state.set("last_call", "raw_state")
    database = pmnc.state.get_database("orders") # the original's BerkeleyDB handle
    return repr(database)

def stop_cage():
    pmnc.startup.exit()
    return "stopping"

###############################################################################

def self_test():

    assert pmnc.request.self_test == __name__

    ###################################

    def test_settings():

        values = pmnc.__getattr__(__name__).settings()
        assert values["greeting"] == "hello from a self-test", values
        assert values["missing"] is None and values["missing_with_default"] == "fallback"
        assert values["keys"] == [ "batch_size", "greeting" ]

    test_settings()

    ###################################

    def test_deadline():

        fake_request(30.0)
        assert not pmnc.request.expires_in(10.0)
        assert pmnc.request.expires_in(60.0)
        assert pmnc.request.remain > 10.0 # asking did not move it
        assert pmnc.request.description.startswith("RQ-")

    test_deadline()

    ###################################

    def test_typecheck():

        with expected(InputParameterError("notebook() has got an incompatible value for key: ")):
            pmnc.idioms.notebook("BAD", "x")

    test_typecheck()

    ###################################

    def test_shared():

        fake_request(10.0)
        got = pmnc.idioms.queues()
        assert got["items"] == [ "item 0", "item 1", "item 2" ] and got["pool"] == [ "idioms/feeders", 2 ]
        assert pmnc.idioms.locks() == dict(reader_got_it = False)

    test_shared()

    ###################################

    def test_modules():

        fake_request(10.0)
        seen = pmnc.idioms.modules()
        assert seen["name"] == "idioms" and seen["caller"] == "idioms", seen
        assert seen["greeting"] == "the substitute greeting from alternatives/"
        with expected(Exception, ".*LIMIT.*neither a class nor a function"):
            pmnc.partial.LIMIT

    test_modules()

    ###################################

if __name__ == "__main__": import pmnc.self_test; pmnc.self_test.run(required_dirs = ("alternatives", ))

###############################################################################
# EOF
