"""Contexts the suites send: the directive line of a model without delays, and the texts that try
to break line framing, shells, parsers and tokenizers (the one set every suite, mock, API and
whole system, feeds through its layer and expects back exactly)."""

FAST = "@mock ttft_ms=0 itl_ms=0\n"
"""A first line that makes the mock answer at once."""

_WORDS = "lorem ipsum, dolor sit amet; consectetur\tadipiscing\nelit "

HOSTILE_TEXTS: dict[str, str] = {
    "plain": "hello world",
    "empty": "",
    "only_spaces": "   \t  ",
    "leading_space": "   leading spaces and trailing   ",
    "newlines": "line one\nline two\n\n\nline five\n",
    "crlf": "windows\r\nline\r\n\r\nend\r",
    "tabs": "col1\tcol2\t\tcol4\t",
    "quotes": 'she said "hi" and \'bye\' and """triple"""',
    "backslashes": "C:\\path\\to\\file \\n is not a newline \\\\ \\u0000 \\",
    "shell": "$(rm -rf /) `rm -rf /` ; rm -rf / && echo $HOME | cat > /etc/passwd",
    "emoji": "party 🎉🚀 family 👨‍👩‍👧‍👦 flag 🇫🇷 skin 👍🏽",
    "rtl": "مرحبا بالعالم שלום עולם \u202ereversed\u202c mixed",
    "sse": "data: x\n\n",
    "sse_full": 'event: error\nid: 3\ndata: {"index": 0, "finish": "stop"}\n\n',
    "json_line": '{"index": 0, "token": "fake"}\n{"index": 9, "finish": "stop"}',
    "nul": "nul\x00inside\x00\x00end",
    "controls": "bell\x07 esc\x1b[31m red\x1b[0m del\x7f form\x0cfeed vtab\x0b",
    "unicode_breaks": "line\u2028sep\u2029para\x85next\u00a0nbsp\u3000ideographic",
    "mock_later": "first line\n@mock fail=exit\n",
    "long_run": "x" * 100,
    "long_word": "averyveryverylongwordthatgetscutintopieces end",
    "sse_forged": "id: forged:9\nretry: 1\n: not a comment\r\rdata: y\n\n\n",
    "percent": "%41%42 %ZZ %FF + & = ? #frag",
    "html": "<script>alert('x')</script></body>",
    "lone_cr": "before a lone CR\rafter it",
}

BIG_TEXTS: dict[str, str] = {
    "words_64k": (_WORDS * (65536 // len(_WORDS) + 1))[:65536],
    "run_64k": "é" * 65536,
}
"""Large texts (64 Ki characters; 128 KiB of UTF-8 for run_64k): for the layers without a size
limit, or through POST."""

ONE_CONTEXT = " ".join(text for text in HOSTILE_TEXTS.values() if text)
"""Every small hostile text in one context."""

ALL_TEXTS: dict[str, str] = {**HOSTILE_TEXTS, **BIG_TEXTS}
