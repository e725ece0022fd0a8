"""Call-time annotation checks: lib/pmnc/typecheck.py.

No `from __future__ import annotations` here on purpose: most annotations
below are predicates and literals, evaluated when each function is defined.
"""

import typing
from collections.abc import Callable
from typing import Any, Literal, Optional

import pytest
from pmnc.errors import InputParameterError, ReturnValueError, TypeCheckError, TypeCheckSpecificationError
from pmnc.typecheck import (
    anything,
    by_regex,
    dict_of,
    either,
    list_of,
    nothing,
    one_of,
    optional,
    set_of,
    tuple_of,
    typecheck,
    with_attr,
)


def accepts(func: Callable[..., Any], *args: Any, **kwargs: Any) -> bool:
    """Whether the checked `func` lets these arguments through."""
    try:
        typecheck(func)(*args, **kwargs)
    except InputParameterError:
        return False
    return True


# --- classes -------------------------------------------------------------------


def test_class_annotation_is_an_isinstance_check() -> None:
    def f(x: str) -> None:
        pass

    assert accepts(f, "a")
    assert not accepts(f, b"a")
    assert not accepts(f, None)


def test_no_int_to_float_promotion() -> None:
    def wait(timeout: float) -> None:
        pass

    assert accepts(wait, 3.0)
    assert not accepts(wait, 3)


def test_subclass_instances_pass() -> None:
    class Base:
        pass

    class Derived(Base):
        pass

    def f(x: Base) -> None:
        pass

    assert accepts(f, Derived())
    assert not accepts(f, object())


def test_none_annotation_accepts_only_none() -> None:
    def f(x: None) -> None:
        pass

    assert accepts(f, None)
    assert not accepts(f, 0)


# --- tuple and list literals -----------------------------------------------------


def test_tuple_literal_spec_checks_type_length_and_elements() -> None:
    def f(pair: (int, str)) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(f, (1, "a"))
    assert not accepts(f, [1, "a"])  # a list is not a tuple
    assert not accepts(f, (1, "a", None))  # wrong length
    assert not accepts(f, (1,))
    assert not accepts(f, ("a", 1))  # elements in order


def test_list_literal_spec_checks_type_length_and_elements() -> None:
    def f(pair: [str, optional(int)]) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(f, ["a", 1])
    assert accepts(f, ["a", None])
    assert not accepts(f, ("a", 1))
    assert not accepts(f, ["a"])
    assert not accepts(f, ["a", "b"])


def test_nested_literal_specs() -> None:
    def f(x: (int, [str, str])) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(f, (1, ["a", "b"]))
    assert not accepts(f, (1, ("a", "b")))


# --- predicates and helpers ------------------------------------------------------


def test_any_callable_is_a_predicate() -> None:
    def positive(x: lambda v: v > 0) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(positive, 1)
    assert not accepts(positive, 0)


def test_builtin_callable_as_predicate() -> None:
    def f(cb: callable) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(f, len)
    assert not accepts(f, 1)


def test_optional_allows_none() -> None:
    def f(x: optional(int)) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(f, None)
    assert accepts(f, 1)
    assert not accepts(f, "1")


def test_optional_parameter_may_be_omitted() -> None:
    def f(x: optional(int) = None) -> int | None:  # type: ignore[valid-type]
        return x

    assert typecheck(f)() is None


def test_by_regex_uses_a_full_match() -> None:
    def f(x: by_regex(r"[a-z]+")) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(f, "abc")
    assert not accepts(f, "abc1")
    assert not accepts(f, "1abc")


def test_by_regex_dollar_rejects_trailing_newline() -> None:
    def f(x: by_regex(r"^[0-9]+$")) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(f, "123")
    assert not accepts(f, "123\n")


def test_by_regex_requires_same_string_type_as_the_pattern() -> None:
    def text(x: by_regex("^ab$")) -> None:  # type: ignore[valid-type]
        pass

    def raw(x: by_regex(b"^ab$")) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(text, "ab")
    assert not accepts(text, b"ab")
    assert accepts(raw, b"ab")
    assert not accepts(raw, "ab")
    assert not accepts(text, None)


def test_one_of() -> None:
    def f(method: one_of("GET", "POST")) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(f, "GET")
    assert accepts(f, "POST")
    assert not accepts(f, "PUT")


def test_either() -> None:
    def f(x: either(int, by_regex("^[0-9]+$"))) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(f, 12)
    assert accepts(f, "12")
    assert not accepts(f, "x")
    assert not accepts(f, 1.5)


def test_anything_and_nothing() -> None:
    def f(x: anything) -> None:
        pass

    def g(x: nothing) -> None:
        pass

    assert accepts(f, object())
    assert accepts(f, None)
    assert accepts(g, None)  # `-> nothing`: the original's "returns no value"
    assert not accepts(g, 1)


def test_tuple_of_and_list_of_and_set_of() -> None:
    def t(x: tuple_of(int)) -> None:  # type: ignore[valid-type]
        pass

    def lst(x: list_of(str)) -> None:  # type: ignore[valid-type]
        pass

    def s(x: set_of(int)) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(t, ())
    assert accepts(t, (1, 2, 3))
    assert not accepts(t, [1, 2])
    assert not accepts(t, (1, "2"))
    assert accepts(lst, ["a", "b"])
    assert not accepts(lst, ("a",))
    assert not accepts(lst, ["a", 1])
    assert accepts(s, {1, 2})
    assert not accepts(s, {1, "2"})
    assert not accepts(s, [1])


def test_dict_of_checks_keys_and_values() -> None:
    def f(x: dict_of(str, int)) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(f, {})
    assert accepts(f, {"a": 1})
    assert not accepts(f, {1: 1})
    assert not accepts(f, {"a": "1"})
    assert not accepts(f, [("a", 1)])


def test_with_attr() -> None:
    class Reader:
        def read(self) -> bytes:
            return b""

        def close(self) -> None:
            pass

    def f(x: with_attr("read", "close")) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(f, Reader())
    assert not accepts(f, object())


def test_helpers_nest() -> None:
    def f(x: list_of(optional(dict_of(str, tuple_of(int))))) -> None:  # type: ignore[valid-type]
        pass

    assert accepts(f, [None, {"a": (1, 2)}])
    assert not accepts(f, [{"a": [1, 2]}])


def test_helper_names_appear_in_their_repr() -> None:
    assert repr(optional(int)) == "optional(<class 'int'>)"
    assert repr(one_of("a", "b")) == "one_of('a', 'b')"
    assert repr(by_regex("^x$")) == "by_regex('^x$')"


# --- typing forms ------------------------------------------------------------------


def test_union_with_none() -> None:
    def f(x: int | None) -> None:
        pass

    def g(x: Optional[int]) -> None:  # noqa: UP045 - the old spelling must work too
        pass

    for func in (f, g):
        assert accepts(func, 1)
        assert accepts(func, None)
        assert not accepts(func, "1")


def test_union_of_classes() -> None:
    def f(x: int | str) -> None:
        pass

    assert accepts(f, 1)
    assert accepts(f, "1")
    assert not accepts(f, 1.0)


def test_generic_list_checks_elements() -> None:
    def f(x: list[int]) -> None:
        pass

    assert accepts(f, [])
    assert accepts(f, [1, 2])
    assert not accepts(f, [1, "2"])
    assert not accepts(f, (1, 2))


def test_generic_dict_checks_keys_and_values() -> None:
    def f(x: dict[str, int]) -> None:
        pass

    assert accepts(f, {"a": 1})
    assert not accepts(f, {"a": "1"})
    assert not accepts(f, {1: 1})
    assert not accepts(f, [])


def test_variadic_tuple() -> None:
    def f(x: tuple[int, ...]) -> None:
        pass

    assert accepts(f, ())
    assert accepts(f, (1, 2, 3))
    assert not accepts(f, (1, "2"))
    assert not accepts(f, [1, 2])


def test_fixed_tuple() -> None:
    def f(x: tuple[int, str]) -> None:
        pass

    assert accepts(f, (1, "a"))
    assert not accepts(f, (1, "a", "b"))
    assert not accepts(f, ("a", 1))


def test_literal() -> None:
    def f(mode: Literal["r", "w"]) -> None:
        pass

    assert accepts(f, "r")
    assert accepts(f, "w")
    assert not accepts(f, "a")


def test_literal_compares_types_too() -> None:
    def f(n: Literal[1]) -> None:
        pass

    assert accepts(f, 1)
    assert not accepts(f, True)
    assert not accepts(f, 1.0)


def test_any_accepts_everything() -> None:
    def f(x: Any) -> None:
        pass

    assert accepts(f, None)
    assert accepts(f, object())


def test_nested_typing_forms() -> None:
    def f(x: dict[str, list[int | None]]) -> None:
        pass

    assert accepts(f, {"a": [1, None]})
    assert not accepts(f, {"a": [1, "x"]})


def test_string_annotations_are_resolved() -> None:
    def f(x: "int") -> "str":
        return str(x)

    assert typecheck(f)(1) == "1"
    assert not accepts(f, "1")


def test_unresolvable_string_annotation_is_a_specification_error() -> None:
    def f(x: "NoSuchName") -> None:  # type: ignore[name-defined] # noqa: F821
        pass

    with pytest.raises(TypeCheckSpecificationError):
        typecheck(f)


# --- how arguments are passed -----------------------------------------------------


def test_keyword_only_arguments_are_checked() -> None:
    def f(*, x: int) -> None:
        pass

    assert accepts(f, x=1)
    assert not accepts(f, x="1")


def test_positional_parameter_passed_by_keyword_is_checked() -> None:
    def f(a: int, b: str) -> None:
        pass

    assert accepts(f, b="x", a=1)
    assert not accepts(f, 1, b=2)
    assert not accepts(f, a="1", b="x")


def test_var_positional_and_var_keyword_are_checked() -> None:
    def f(*args: int, **kwargs: str) -> None:
        pass

    assert accepts(f, 1, 2, a="x")
    assert not accepts(f, 1, "2")
    assert not accepts(f, a=1)


def test_unannotated_parameter_by_keyword_is_not_checked_against_var_keyword() -> None:
    """Only the extra keywords collected by **kwargs are subject to its annotation."""
    def f(a, **kwargs: int) -> None:  # type: ignore[no-untyped-def]
        pass

    def g(*, a, **kwargs: int) -> None:  # type: ignore[no-untyped-def]
        pass

    assert accepts(f, a="x", b=1)
    assert accepts(g, a="x", b=1)
    assert not accepts(f, a="x", b="y")


def test_unannotated_parameters_are_left_alone() -> None:
    def f(a, b: int) -> None:  # type: ignore[no-untyped-def]
        pass

    assert accepts(f, object(), 1)
    assert not accepts(f, object(), "1")


# --- return values -----------------------------------------------------------------


def test_return_value_is_checked() -> None:
    def f(x: Any) -> int:
        return x  # type: ignore[no-any-return]

    checked = typecheck(f)
    assert checked(5) == 5
    with pytest.raises(ReturnValueError) as info:
        checked("5")
    assert str(info.value) == "f() has returned an incompatible value: 5"


def test_return_annotation_none_requires_none() -> None:
    def f(x: Any) -> None:
        return x  # type: ignore[no-any-return]

    checked = typecheck(f)
    assert checked(None) is None
    with pytest.raises(ReturnValueError):
        checked(1)


def test_return_only_annotation_wraps_the_function() -> None:
    def f(x):  # type: ignore[no-untyped-def]
        return x

    f.__annotations__ = {"return": str}
    checked = typecheck(f)
    assert checked("a") == "a"
    with pytest.raises(ReturnValueError):
        checked(1)


# --- error texts ---------------------------------------------------------------------


def test_input_error_text() -> None:
    def f(x: int) -> None:
        pass

    with pytest.raises(InputParameterError) as info:
        typecheck(f)("abc")
    assert str(info.value) == "f() has got an incompatible value for x: abc"


def test_input_error_text_for_keyword() -> None:
    def connect(host: str, *, port: int) -> None:
        pass

    with pytest.raises(InputParameterError) as info:
        typecheck(connect)("h", port="80")
    assert str(info.value) == "connect() has got an incompatible value for port: 80"


def test_long_values_are_shortened_in_error_texts() -> None:
    def f(x: int) -> None:
        pass

    with pytest.raises(InputParameterError) as info:
        typecheck(f)("x" * 1000)
    text = str(info.value)
    assert text.startswith("f() has got an incompatible value for x: xxx")
    assert text.endswith("...")
    assert len(text) < 300


def test_errors_are_type_errors() -> None:
    """Callers catching TypeError keep working."""
    def f(x: int) -> None:
        pass

    with pytest.raises(TypeError):
        typecheck(f)("1")
    assert issubclass(InputParameterError, TypeCheckError)
    assert issubclass(ReturnValueError, TypeCheckError)


# --- wrapping ------------------------------------------------------------------------


def test_bad_default_is_a_specification_error() -> None:
    def f(x: int = "1") -> None:  # type: ignore[assignment]
        pass

    with pytest.raises(TypeCheckSpecificationError) as info:
        typecheck(f)
    assert "default value for x" in str(info.value)


def test_bad_keyword_only_default_is_a_specification_error() -> None:
    def f(*, x: by_regex("^a$") = "b") -> None:  # type: ignore[valid-type]
        pass

    with pytest.raises(TypeCheckSpecificationError):
        typecheck(f)


def test_good_default_is_accepted_and_used() -> None:
    def f(x: int = 3) -> int:
        return x

    assert typecheck(f)() == 3


def test_uncheckable_annotation_is_a_specification_error() -> None:
    def f(x: 5) -> None:  # type: ignore[valid-type]
        pass

    with pytest.raises(TypeCheckSpecificationError):
        typecheck(f)


def test_unannotated_function_returned_unchanged() -> None:
    def f(a, b=1, *args, **kwargs):  # type: ignore[no-untyped-def]
        return a

    assert typecheck(f) is f


def test_wrapper_keeps_name_and_passes_arguments_through() -> None:
    def add(a: int, b: int = 0, *rest: int, scale: int = 1) -> int:
        return (a + b + sum(rest)) * scale

    checked = typecheck(add)
    assert checked is not add
    assert checked.__name__ == "add"
    assert checked(1, 2, 3, scale=2) == 12
    assert checked(a=1) == 1


def test_exceptions_from_the_function_pass_unchanged() -> None:
    def f(x: int) -> int:
        raise KeyError(x)

    with pytest.raises(KeyError):
        typecheck(f)(1)


def test_typing_module_callable_annotation_is_accepted() -> None:
    def f(cb: typing.Callable[[int], int]) -> None:
        pass

    assert accepts(f, abs)
    assert not accepts(f, 1)
