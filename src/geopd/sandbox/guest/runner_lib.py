# geopd sandbox request protocol, runner side: prepended to runner sources (geopd.sandbox.session).
import json as _json, os as _os, struct as _struct
_REQ = _os.dup(0)
_os.dup2(_os.open("/dev/null", _os.O_RDONLY), 0)
_REPLY = int(__import__("sys").argv.pop())
_read, _write, _pack, _unpack, _dumps, _loads = _os.read, _os.write, _struct.pack, _struct.unpack, _json.dumps, _json.loads

def _recv_exact(n):
    parts = []
    while n:
        block = _read(_REQ, min(n, 1 << 20))
        if not block:
            return None
        parts.append(block)
        n -= len(block)
    return b"".join(parts)

_seq = [None]

def recv():
    head = _recv_exact(12)
    if head is None:
        return None
    hlen, blen = _unpack(">IQ", head)
    header = _loads(_recv_exact(hlen))
    body = _recv_exact(blen) if blen else b""
    _seq[0] = header.get("seq")
    return header, body

def send(header, body=b""):
    h = _dumps(dict(header, seq=_seq[0])).encode()
    data = memoryview(_pack(">IQ", len(h), len(body)) + h + body)
    while data:
        data = data[_write(_REPLY, data):]
