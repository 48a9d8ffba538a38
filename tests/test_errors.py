"""The one line the project's error messages quote of the exception behind them."""

from adder.errors import first_line


def test_first_line_is_the_first_non_blank_line_cut_to_the_limit():
    assert first_line(RuntimeError("\n  shape mismatch  \nat layer 3\nsee the docs")) == "shape mismatch"
    assert first_line(ValueError("x" * 300)) == "x" * 200
    assert first_line(ValueError("abcdef"), limit=3) == "abc"


def test_an_empty_message_gives_the_exception_type_once():
    assert first_line(IndexError()) == "IndexError"
    assert first_line(OSError("\n \n"), with_type=True) == "OSError"
    assert first_line(KeyError("model_state"), with_type=True) == "KeyError: 'model_state'"
