"""Seals of calls over NATS (rpc/seal.py), without NATS: who called is proven, forgeries and replays refused."""

from __future__ import annotations

import datetime
import hashlib
import hmac
import random
import threading
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from pmnc import keys
from pmnc.errors import KeysError, ProtocolError
from pmnc.rpc import seal
from pmnc.rpc.identity import ClusterKeys
from pmnc.rpc.seal import MAX_SKEW, WINDOW, Opened, Retry, Sealer, SealError, describe

FLOCK = "F"


class Clock:
    """A clock the test moves."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("ssl_keys")
    for cage in ("a", "b", "c"):
        ClusterKeys.ensure(path, FLOCK, cage)
    return path


def sealer(folder: Path, cage: str, flock: str = FLOCK, **kwargs: object) -> Sealer:
    return Sealer(ClusterKeys.ensure(folder, flock, cage), flock, cage, **kwargs)  # type: ignore[arg-type]


def answer(callee: Sealer, data: bytes, body: Callable[[bytes], bytes] = lambda b: b"re:" + b) -> bytes:
    """What the callee sends back: its refusal, or the sealed result of running the call."""
    opened = callee.open_call(data)
    return callee.seal_reply(opened.ticket, body(opened.body)) if isinstance(opened, Opened) else opened


def call(caller: Sealer, callee: Sealer, target: str, body: bytes) -> tuple[bytes, list[str]]:
    """One call as the NATS caller makes it: seal, exchange, seal again on Retry; the steps taken."""
    steps = []
    for _ in range(4):
        data, pending = caller.seal_call(target, body, 10.0)
        result = caller.open_reply(pending, answer(callee, data))
        if not isinstance(result, Retry):
            return result, [*steps, "ok"]
        steps.append(result.reason)
    raise AssertionError(f"no answer after {steps}")


def fields(data: bytes) -> list[object]:
    return msgpack.unpackb(data)  # type: ignore[no-any-return]


def pack(message: list[object]) -> bytes:
    return msgpack.packb(message)  # type: ignore[no-any-return]


def refusal(data: bytes) -> str:
    message = fields(data)
    assert message[1] == "refused", message
    return str(message[2])


@pytest.fixture
def pair(folder: Path) -> tuple[Sealer, Sealer]:
    """Cage a and cage b, b already knowing a and a knowing b."""
    a, b = sealer(folder, "a"), sealer(folder, "b")
    call(a, b, "b", b"hello")
    return a, b


# --- a call and its answer -----------------------------------------------------------------


def test_first_contact_fetches_the_certificate_and_then_calls_run(folder: Path) -> None:
    a, b = sealer(folder, "a"), sealer(folder, "b")
    assert call(a, b, "b", b"hello") == (b"re:hello", ["certificate", "ok"])
    assert call(a, b, "b", b"again") == (b"re:again", ["ok"])  # keys cached: one exchange per call
    b2 = sealer(folder, "b")  # another instance of cage b: it has not seen a's certificate
    assert call(a, b2, "b", b"there") == (b"re:there", ["who", "ok"])
    assert call(a, b2, "b", b"more") == (b"re:more", ["ok"])
    # b learnt a's certificate from a's calls: it calls a back without asking for it
    assert call(b, a, "a", b"back") == (b"re:back", ["ok"])
    c = sealer(folder, "c")
    assert call(c, a, "a", b"from c") == (b"re:from c", ["certificate", "ok"])


def test_a_renewed_certificate_is_learnt_from_the_callee(folder: Path) -> None:
    keys.make_cage(folder, "d", FLOCK)
    a, d = sealer(folder, "a"), sealer(folder, "d")
    call(a, d, "d", b"hi")
    keys.make_cage(folder, "d", FLOCK, force=True)  # d restarts with a new key and certificate
    renewed = sealer(folder, "d")
    assert renewed.fingerprint != d.fingerprint
    assert call(a, renewed, "d", b"hi") == (b"re:hi", ["certificate", "ok"])
    data, _ = a.seal_call("d", b"old", 5.0)
    assert fields(d.open_call(data))[1] == "certificate"  # sealed for the new certificate, not the old


def test_the_callee_sees_the_caller_its_certificate_names(pair: tuple[Sealer, Sealer]) -> None:
    a, b = pair
    data, _ = a.seal_call("b", b"body", 5.0)
    opened = b.open_call(data)
    assert isinstance(opened, Opened)
    assert (opened.caller, opened.body) == ("a", b"body")


def test_a_cage_calls_another_instance_of_itself(folder: Path) -> None:
    a1, a2 = sealer(folder, "a"), sealer(folder, "a")
    assert call(a1, a2, "a", b"me")[0] == b"re:me"
    assert a1.instance != a2.instance


def test_an_empty_body_and_a_large_one_go_through(pair: tuple[Sealer, Sealer]) -> None:
    a, b = pair
    assert call(a, b, "b", b"")[0] == b"re:"
    big = bytes(range(256)) * 4096  # 1 MiB
    assert call(a, b, "b", big)[0] == b"re:" + big


def test_the_mac_is_hmac_sha256() -> None:
    key, start, head, body = b"k" * 32, b"start", b"head", b"body" * 100
    assert seal._Hmac(key).after(start).digest(head, body) == hmac.digest(key, start + head + body, "sha256")


# --- forgeries -----------------------------------------------------------------------------


@pytest.mark.parametrize("index, change", [
    (9, lambda v: v + b"!"),                 # body
    (8, lambda v: bytes([v[0] ^ 1]) + v[1:]),  # MAC
    (6, lambda v: v + 1),                    # counter
    (7, lambda v: v + 100.0),                # expires
    (5, lambda v: "f" * 16),                 # instance
])
def test_a_tampered_call_is_refused(pair: tuple[Sealer, Sealer], index: int, change: Callable) -> None:  # type: ignore[type-arg]
    a, b = pair
    data, _ = a.seal_call("b", b"pay 10", 5.0)
    message = fields(data)
    message[index] = change(message[index])
    assert refusal(b.open_call(pack(message))) == "the call failed its MAC check"
    assert isinstance(b.open_call(data), Opened)  # the original was not spent by the forgery


def test_a_tampered_or_misplaced_answer_is_refused(pair: tuple[Sealer, Sealer]) -> None:
    a, b = pair
    data, pending = a.seal_call("b", b"x", 5.0)
    reply = fields(answer(b, data))
    forged = pack([reply[0], reply[1], reply[2], reply[3] + b"!"])
    with pytest.raises(SealError, match="answer from cage b failed its MAC check"):
        a.open_reply(pending, forged)
    assert a.open_reply(pending, pack(reply)) == b"re:x"
    _, other = a.seal_call("b", b"x", 5.0)  # the same answer does not fit another call
    with pytest.raises(SealError, match="MAC check"):
        a.open_reply(other, pack(reply))


def test_a_call_made_up_without_the_key_is_refused(pair: tuple[Sealer, Sealer], folder: Path) -> None:
    a, b = pair
    data, _ = a.seal_call("b", b"x", 5.0)
    message = fields(data)
    message[8] = bytes(32)  # a made-up MAC with a's real fingerprint
    assert refusal(b.open_call(pack(message))) == "the call failed its MAC check"
    message[3] = bytes(16)  # an unknown fingerprint: b asks who that is; the call does not run
    assert fields(b.open_call(pack(message))) == [1, "who"]


def test_a_cage_cannot_call_as_another(folder: Path, pair: tuple[Sealer, Sealer]) -> None:
    a, b = pair
    c = sealer(folder, "c")
    call(c, b, "b", b"hi")
    data, _ = c.seal_call("b", b"as a", 5.0)
    message = fields(data)
    message[2] = "a"  # c's certificate and key, a's name
    assert refusal(b.open_call(pack(message))) == "the certificate is of cage c, not of a"
    message[3] = a.fingerprint  # a's fingerprint, c's MAC
    assert refusal(b.open_call(pack(message))) == "the call failed its MAC check"
    message[10] = c.certificate  # showing c's certificate as a's
    assert "not the one of the caller's fingerprint" in refusal(b.open_call(pack(message)))


def test_random_bytes_are_refused_not_raised(pair: tuple[Sealer, Sealer]) -> None:
    _, b = pair
    for junk in (b"", b"\x00" * 40, bytes(range(256)), pack([1, "call"]), pack({"a": 1}),
                 pack([1, "call", "a", b"x", b"y", "i", 1, 1.0, b"m", b"b", None, "extra"]), pack([[[[]]]])):
        assert refusal(b.open_call(junk)) == "malformed call"


@pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")  # damaged certificates
def test_damaged_calls_are_refused_never_raised_nor_run(folder: Path) -> None:
    a, b = sealer(folder, "a"), sealer(folder, "b")
    call(a, b, "b", b"")
    rng = random.Random(19)
    sealed = [a.seal_call("b", b"body", 5.0)[0], sealer(folder, "c").seal_call("b", b"", 5.0)[0]]  # one with a cert
    for _ in range(3000):
        damaged = bytearray(rng.choice(sealed))
        for _ in range(rng.randint(1, 3)):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        result = b.open_call(bytes(damaged))
        if isinstance(result, Opened):  # only bytes the MAC does not cover may differ
            assert (result.caller, result.body) == ("a", b"body")
        else:
            assert fields(result)[1] in ("refused", "who", "certificate")


def test_an_answer_that_is_not_one_raises_seal_error(pair: tuple[Sealer, Sealer]) -> None:
    a, _ = pair
    _, pending = a.seal_call("b", b"x", 5.0)
    for junk in (b"", b"\xc1", pack([1, "ok"]), pack([2, "ok", b"m", b"b"]), pack([1, "certificate", "text"])):
        with pytest.raises(SealError, match="malformed answer from cage b"):
            a.open_reply(pending, junk)
    with pytest.raises(SealError, match="cage b refused the call: because\\?"):
        a.open_reply(pending, pack([1, "refused", "because\n"]))


# --- replays and expiry ------------------------------------------------------------------


def test_a_replayed_call_is_refused(pair: tuple[Sealer, Sealer]) -> None:
    a, b = pair
    data, _ = a.seal_call("b", b"pay 10", 5.0)
    assert isinstance(b.open_call(data), Opened)
    assert refusal(b.open_call(data)) == "the call was replayed"


def test_calls_out_of_order_pass_within_the_window_only(pair: tuple[Sealer, Sealer]) -> None:
    a, b = pair
    sealed = [a.seal_call("b", b"n", 5.0)[0] for _ in range(WINDOW + 10)]
    assert isinstance(b.open_call(sealed[-1]), Opened)
    assert isinstance(b.open_call(sealed[20]), Opened)  # late, but in the window
    assert refusal(b.open_call(sealed[20])) == "the call was replayed"
    assert refusal(b.open_call(sealed[0])) == f"the call is older than the last {WINDOW} of its caller"
    assert isinstance(b.open_call(sealed[-2]), Opened)


def test_an_expired_call_is_refused(folder: Path) -> None:
    clock = Clock()
    a, b = sealer(folder, "a", clock=clock), sealer(folder, "b", clock=clock)
    call(a, b, "b", b"hi")
    late, _ = a.seal_call("b", b"late", 2.0)
    in_time, _ = a.seal_call("b", b"in time", 2.0)
    clock.now += 2.0 + MAX_SKEW + 1.0
    assert refusal(b.open_call(late)).startswith("the call expired 31.0 seconds ago")
    clock.now -= 2.0  # within the skew allowed between the two clocks
    assert isinstance(b.open_call(in_time), Opened)


# --- certificates ------------------------------------------------------------------------


def test_a_certificate_of_another_ca_is_refused_both_ways(folder: Path, tmp_path: Path) -> None:
    stranger = sealer(tmp_path / "other", "a")  # a cage "a" of flock F, with a CA of its own
    a, b = sealer(folder, "a"), sealer(folder, "b")
    data, pending = stranger.seal_call("b", b"hi", 5.0)
    assert refusal(b.open_call(data)) == "the certificate is not issued by this cluster's CA"
    certificate = b.open_call(a.seal_call("b", b"", 5.0)[0])  # b's certificate, as b answers a
    assert fields(certificate)[1] == "certificate"
    with pytest.raises(SealError, match=r"cage b answered with a certificate that is refused: .* not issued by this"):
        stranger.open_reply(pending, certificate)
    call(a, b, "b", b"")
    message = fields(a.seal_call("b", b"hi", 5.0)[0])
    message[10] = stranger.certificate  # the stranger's certificate slipped into a's call
    assert refusal(b.open_call(pack(message))) == "the certificate is not issued by this cluster's CA"


def test_a_certificate_of_another_flock_is_refused(folder: Path) -> None:
    keys.make_cage(folder, "g", flock="G")  # the same CA, flock G
    outsider = Sealer(ClusterKeys(folder, "G", "g"), "G", "g")
    b = sealer(folder, "b")
    data, _ = outsider.seal_call("b", b"hi", 5.0)
    assert refusal(b.open_call(data)) == "the certificate of cage g is of flock G, not F"
    with pytest.raises(KeysError, match="of flock G, not F"):
        Sealer(ClusterKeys(folder, "G", "g"), "F", "g")  # its own certificate checked at start


def test_an_answer_with_the_certificate_of_another_cage_is_refused(folder: Path) -> None:
    a, c = sealer(folder, "a"), sealer(folder, "c")
    data, pending = a.seal_call("b", b"hi", 5.0)
    with pytest.raises(SealError, match="cage b answered with the certificate of cage c"):
        a.open_reply(pending, c.open_call(data))  # c subscribed where b should be


def test_an_expired_certificate_is_refused(folder: Path) -> None:
    clock = Clock()
    a, b = sealer(folder, "a", clock=clock), sealer(folder, "b", clock=clock)
    call(a, b, "b", b"hi")
    data, _ = a.seal_call("b", b"hi", 1e6)
    clock.now += (keys.LEAF_DAYS + 1) * 86400.0
    assert refusal(b.open_call(data)) == "the certificate of cage a has expired"


def rsa_cage(folder: Path, cage: str) -> None:
    """cages/<cage>.pem with an RSA key, signed by the cluster CA (a cage made by other tools)."""
    ca_cert, ca_key = keys.load_ca(folder)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    now = datetime.datetime.now(datetime.UTC)
    cert = (x509.CertificateBuilder().subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cage)]))
            .issuer_name(ca_cert.subject).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=1)).not_valid_after(now + datetime.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.UniformResourceIdentifier(f"pmnc://{FLOCK}/{cage}")]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()) + cert.public_bytes(serialization.Encoding.PEM)
    keys.write_secret(folder / keys.CAGES / f"{cage}.pem", pem)


def test_a_cage_with_a_non_ec_key_gets_keys_error(folder: Path) -> None:
    rsa_cage(folder, "r")
    cluster_keys = ClusterKeys.ensure(folder, FLOCK, "r")  # good enough for TLS
    with pytest.raises(KeysError, match=r"calls over NATS need an EC P-256 key .*--keys cage .* r --flock F --force"):
        Sealer(cluster_keys, FLOCK, "r")
    b = sealer(folder, "b")  # and its certificate, shown to a cage, is refused
    data, _ = sealer(folder, "a").seal_call("b", b"", 5.0)
    message = fields(data)
    message[2], message[3] = "r", hashlib.sha256(pem_der(folder, "r")).digest()[:16]
    message[10] = pem_der(folder, "r")
    assert refusal(b.open_call(pack(message))) == "the certificate of cage r has no EC P-256 key"


def pem_der(folder: Path, cage: str) -> bytes:
    pem = (folder / keys.CAGES / f"{cage}.pem").read_bytes()
    return x509.load_pem_x509_certificates(pem)[0].public_bytes(serialization.Encoding.DER)


# --- limits --------------------------------------------------------------------------------


def test_oversized_fields_are_refused(folder: Path) -> None:
    a, b = sealer(folder, "a", max_body=1000), sealer(folder, "b", max_body=1000)
    call(a, b, "b", b"")
    with pytest.raises(SealError, match="call of 1001 bytes exceeds the limit of 1000 bytes"):
        a.seal_call("b", b"x" * 1001, 5.0)
    big = sealer(folder, "a")
    call(big, b, "b", b"")
    assert "exceeds the limit" in refusal(b.open_call(big.seal_call("b", b"x" * 20_000, 5.0)[0]))
    data, _ = big.seal_call("b", b"x" * 1001, 5.0)  # over b's limit, under its frame's: the field is checked
    assert refusal(b.open_call(data)) == "call of 1001 bytes exceeds the limit of 1000 bytes"
    data, _ = a.seal_call("b", b"x", 5.0)
    message = fields(data)
    message[10] = b"c" * (seal.MAX_CERT + 1)
    assert refusal(b.open_call(pack(message))) == f"certificate of {seal.MAX_CERT + 1} bytes exceeds the limit of " \
        f"{seal.MAX_CERT} bytes"
    with pytest.raises(SealError, match="answer of 1001 bytes exceeds"):
        b.seal_reply(seal.Ticket(b._peers[a.fingerprint].answer, bytes(32)), b"y" * 1001)
    for index, value in ((5, "0123456789ABCDEF"), (5, "0" * 17), (6, -1), (7, 5), (6, True)):
        message = fields(data)
        message[index] = value
        assert refusal(b.open_call(pack(message))) == "malformed call", (index, value)
    with pytest.raises(SealError, match="invalid cage name"):
        a.seal_call("no/such", b"", 5.0)
    with pytest.raises(SealError, match="invalid time left"):
        a.seal_call("b", b"", float("nan"))


def test_caches_are_bounded(folder: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(seal, "MAX_INSTANCES", 3)
    b = sealer(folder, "b")
    callers = [sealer(folder, "a") for _ in range(5)]
    for a in callers:
        call(a, b, "b", b"")
    assert len(b._windows) == 3
    assert "windows=3" in repr(b)


# --- threads -------------------------------------------------------------------------------


def test_many_threads_seal_and_open_at_once(pair: tuple[Sealer, Sealer]) -> None:
    a, b = pair
    sealed: list[bytes] = []
    opened: list[object] = []
    lock = threading.Lock()

    def work() -> None:
        for _ in range(300):
            data, pending = a.seal_call("b", b"t", 5.0)
            result = b.open_call(data)
            reply = a.open_reply(pending, b.seal_reply(result.ticket, b"r")) if isinstance(result, Opened) else None
            with lock:
                sealed.append(data)
                opened.append(reply)

    threads = [threading.Thread(target=work) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    counters = [fields(data)[6] for data in sealed]
    assert len(set(counters)) == len(counters) == 2400
    assert opened == [b"r"] * 2400
    old = f"the call is older than the last {WINDOW} of its caller"
    assert {refusal(b.open_call(data)) for data in sealed} <= {"the call was replayed", old}


def test_describe_names_answers_for_logs(pair: tuple[Sealer, Sealer]) -> None:
    _, b = pair
    assert describe(b.open_call(b"junk")) == "refused: malformed call"
    assert describe(pack([1, "who"])) == "who"
    assert describe(b"\xc1") == "malformed"
    assert issubclass(SealError, ProtocolError)
