"""Sieve (RFC 5228): the grammar, validation, the I/O-free interpreter, and script storage.

``compile_script`` / ``Interpreter`` take a script's text and give actions; ``store`` keeps a
user's scripts where Dovecot's Pigeonhole keeps them (``<maildir>/sieve/NAME.sieve`` and the
``.dovecot.sieve`` symlink to the active one). Delivery carries the actions out.
"""

from mailstack.sieve.check import EXTENSIONS, compile_script
from mailstack.sieve.grammar import MAX_NESTING, MAX_SCRIPT_BYTES, SieveSyntaxError
from mailstack.sieve.interp import Action, Context, Envelope, Interpreter, Result

__all__ = ["EXTENSIONS", "MAX_NESTING", "MAX_SCRIPT_BYTES", "Action", "Context", "Envelope", "Interpreter",
           "Result", "SieveSyntaxError", "compile_script"]
