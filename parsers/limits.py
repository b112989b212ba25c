"""Bounds on what parse_message returns and on what it agrees to parse.

Several stdlib and mail-parser code paths are quadratic or worse in some
input shapes (huge headers, many parameters, deep nesting x many lines);
the parse-cost bounds cut those shapes before parsing, so any message up to
MAX_MESSAGE_BYTES parses in seconds.
"""

from __future__ import annotations

# --- Output bounds -------------------------------------------------------
MAX_TEXT_CHARS = 1024 * 1024
MAX_SUBJECT_CHARS = 998  # RFC 5322 line limit; also names and short values
MAX_HEADER_VALUE_CHARS = 2000
MAX_HEADERS = 1000
# A mail loop piles up Received lines; past this many they are dropped, so the
# headers that follow (X-Loop, X-Failed-Recipients) are still seen.
MAX_RECEIVED_HEADERS = 100
MAX_RAW_HEADER_BYTES = 16 * 1024
MAX_RECIPIENTS = 500
MAX_ATTACHMENTS = 500
MAX_DEFECTS = 50
MAX_DEFECT_CHARS = 100
MAX_ERROR_CHARS = 300
# Header values are cut before our own decoding: nothing downstream shows
# more, and decoding a 10 MB header costs real time.
MAX_RAW_VALUE_CHARS = 16 * 1024
MAX_REPEATED_HEADERS = 20  # occurrences of one header name we read
MAX_HTML_INPUT_CHARS = 2 * 1024 * 1024  # over all HTML parts of a message

# --- Parse-cost bounds ----------------------------------------------------
# Several stdlib and mail-parser code paths grow faster than the input;
# these bounds keep any message up to MAX_MESSAGE_BYTES within seconds.
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
# Header values are cut as the stdlib parser reads them (BoundedCompat32).
# Content-Type/-Disposition tighter: every parameter lookup re-parses all
# parameters (~7 µs each, quadratic in length).
MAX_PARSED_VALUE_CHARS = 64 * 1024
MAX_PARSED_PARAMETERISED_CHARS = 2 * 1024
MAX_PARSED_PARAMETERS = 16  # RFC 2231 continuations of a long filename fit
# mail-parser's Received-header analysis costs ~60 µs a header, and it
# decodes every header (quadratic in RFC 2047 words): skip it for header
# floods and rely on the stdlib fallbacks.
MAX_HEADERS_FOR_MAIL_PARSER = 1000
MAX_HEADER_CHARS_FOR_MAIL_PARSER = 256 * 1024
MAX_EPILOGUE_CHARS_FOR_MAIL_PARSER = 64 * 1024
# The stdlib parser and mail-parser cost ~70 µs per MIME part together;
# beyond this many delimiter-like lines the rest of the message is cut.
MAX_MIME_DELIMITERS = 2000
# The stdlib parser tests every line against the boundary of every
# enclosing multipart (~0.2 µs each): bound lines x nesting. Nesting is
# unknown before parsing; the count of boundary declarations bounds it.
MAX_LINES = 1_000_000
MIN_LINES = 20_000
LINE_CHECK_BUDGET = 8_000_000
MAX_WALKED_PARTS = 2 * MAX_MIME_DELIMITERS
MAX_DEPTH = 64
# Header-only salvage of a message too large or too broken to parse.
MAX_HEADER_ONLY_BYTES = 1024 * 1024
