"""Constrained text types shared by the schemas: limits and control characters refused at the edge."""

from typing import Annotated

from msgspec import Meta

# Python's `$` also matches before a final newline; `(?!\n)` keeps "khaki\n" out (and is valid
# ECMAScript, so the patterns stay usable in the OpenAPI document, unlike `\Z`).
END = r"$(?!\n)"
STORE_ID_TEXT = r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}"  # what till keys and reorders name a store by
UUID_TEXT = r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
# Never in text a cashier or a partner reads: C1 controls; bidirectional embeddings, overrides
# and isolates (they reorder what is shown); zero-width spaces, word joiners and byte-order marks;
# line and paragraph separators; soft hyphens, invisible operators, interlinear annotation
# marks and the Hangul and Khmer fillers that show as nothing. Zero-width (non-)joiners and
# direction marks stay: Persian, Indic scripts and emoji sequences need them, and they reorder
# nothing; so do tag characters (U+E0020 to U+E007F), which subdivision flags such as England's need.
INVISIBLE = (
    r"\x80-\x9f\xad\u115f\u1160\u17b4\u17b5\u180e\u200b\u2028\u2029\u202a-\u202e"
    r"\u2060-\u2064\u2066-\u2069\u3164\ufeff\uffa0\ufff9-\ufffb"
)
SINGLE_LINE = r"^[^\x00-\x1f\x7f" + INVISIBLE + "]*" + END
MULTI_LINE = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f" + INVISIBLE + "]*$"

Sku = Annotated[str, Meta(min_length=1, max_length=64, pattern=SINGLE_LINE)]
ProductName = Annotated[str, Meta(min_length=1, max_length=200, pattern=SINGLE_LINE)]
Label = Annotated[str, Meta(min_length=1, max_length=100, pattern=SINGLE_LINE)]
NAME = r"^[a-z][a-z0-9_]*" + END  # an attribute's name: "waist", "sleeve_length"
AttributeName = Annotated[str, Meta(min_length=1, max_length=40, pattern=NAME)]
AttributeValue = Annotated[str, Meta(min_length=1, max_length=200, pattern=SINGLE_LINE)]
Note = Annotated[str, Meta(max_length=2000, pattern=MULTI_LINE)]
