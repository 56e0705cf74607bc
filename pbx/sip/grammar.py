"""RFC 3261 §25 grammar as named regular-expression fragments (the model is h11's ``_abnf.py``).

Only the pieces the parser needs are written out; each names its production.
"""

from __future__ import annotations

import re

# §25.1 basic rules
ALPHANUM = r"[A-Za-z0-9]"
MARK = r"[-_.!~*'()]"
UNRESERVED = rf"(?:{ALPHANUM}|{MARK})"
ESCAPED = r"%[0-9A-Fa-f]{2}"
# token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
# word additionally allows ( ) < > : \ " / [ ] ? { }
WORD = r"[A-Za-z0-9\-.!%*_+`'~()<>:\\\"/\[\]?{}]+"
LWS = r"(?:[ \t]*\r?\n)?[ \t]+"
SWS = r"(?:[ \t]*\r?\n)?[ \t]*"
QUOTED_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'  # (?:[^"\\]|\\.)* unrolled: the same strings, no alternation per character

# §25.1 Method, SIP-Version, Status-Code
METHOD = TOKEN
SIP_VERSION = r"SIP/\d+\.\d+"

# §25.1 host = hostname / IPv4address / IPv6reference
HOSTNAME = r"(?:[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.)*[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?\.?"
IPV4 = r"\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3}"
IPV6_REFERENCE = r"\[[0-9A-Fa-f:.]+\]"
HOST = rf"(?:{IPV6_REFERENCE}|{IPV4}|{HOSTNAME})"
PORT = r"\d{1,5}"

# §25.1 user = 1*( unreserved / escaped / user-unreserved ), user-unreserved = & = + $ , ; ? /
USER = rf"(?:{UNRESERVED}|{ESCAPED}|[&=+$,;?/])+"
PASSWORD = rf"(?:{UNRESERVED}|{ESCAPED}|[&=+$,])*"

REQUEST_LINE_RE = re.compile(rf"^({METHOD}) (\S+) ({SIP_VERSION})$")
# Status-Line = SIP-Version SP Status-Code SP Reason-Phrase; a missing SP + empty phrase is tolerated
# (RFC 4475 §3.1.1.13 "a liberal receiver would accept it"), but the code is exactly three digits (§3.1.2.19).
STATUS_LINE_RE = re.compile(rf"^({SIP_VERSION}) (\d{{3}})(?: (.*))?$", re.DOTALL)
TOKEN_RE = re.compile(rf"^{TOKEN}$")
HOST_RE = re.compile(rf"^{HOST}$")
HOSTPORT_RE = re.compile(rf"^({HOST})(?::({PORT}))?$")
USER_RE = re.compile(rf"^{USER}$")
PASSWORD_RE = re.compile(rf"^{PASSWORD}$")
# §20.42 Via: sent-protocol LWS sent-by
VIA_RE = re.compile(rf"^SIP{SWS}/{SWS}(\d+\.\d+){SWS}/{SWS}({TOKEN}){LWS}({HOST})(?:{SWS}:{SWS}({PORT}))?\s*(.*)$",
                    re.DOTALL)
HEADER_NAME_RE = re.compile(rf"^{TOKEN}$")
# §25.1 display-name = *(token LWS) / quoted-string (the unquoted form, after folding was joined)
DISPLAY_TOKENS_RE = re.compile(rf"^{TOKEN}(?:[ \t]+{TOKEN})*$")
# §7.5 the empty line ending the header block; LF-only line ends are accepted (be liberal in what you accept)
HEAD_END_RE = re.compile(rb"\r?\n\r?\n")
DIGITS_RE = re.compile(r"[0-9]+")  # use with fullmatch: str.isdigit() also accepts non-ASCII digits
# §18.3 Content-Length (or its compact form l) in a raw header block, value possibly on a folded line
CONTENT_LENGTH_RE = re.compile(rb"^(?:content-length|l)[ \t]*:[ \t]*(?:\r?\n[ \t]+)?([0-9]+)[ \t]*\r?$",
                               re.IGNORECASE | re.MULTILINE)
