#!/usr/bin/env python3
"""The conformance harness's hands and eyes inside a namespace (run with `ip netns exec NS`).

  probe.py agent SPEC_JSON   servers + a sniffer; prints "ready", then on stdin EOF (or the
                             deadline) one JSON object: {"events": [...], "packets": [...]}
  probe.py client SPEC_JSON  runs client actions in order; prints one JSON list of results
  probe.py txcsum-off DEV..  turns TX checksum offload off (SIOCETHTOOL), so the sniffer sees
                             complete checksums on veth devices

Agent spec: {"udp": [ports], "tcp": [ports], "sniff": DEVICE|null, "seconds": N}
  UDP server: answers each datagram with "seen IP:PORT N" (N = bytes received) and records it.
  TCP server: reads until EOF or 64 KiB, records the peer and the byte count, answers
  "seen IP:PORT N", then closes (FIN). A request of "RST" is answered by a reset (SO_LINGER 0).
Sniffer: AF_PACKET on DEVICE, incoming IPv4 packets only, decoded (see decode()).

Client actions (each a dict with "kind"):
  udp  {src, sport, dst, dport, size, ttl?, df?, wait?}       -> {reply, error}
  tcp  {src, sport, dst, dport, size, close: "fin"|"rst", wait?} -> {reply, error}
  raw  {packets: [PACKET], gap?}  crafted IPv4 with IP_HDRINCL   -> {sent}
  sleep {seconds}
PACKET: {src, dst, proto, ttl?, id?, df?, mf?, offset? (bytes, multiple of 8), payload_hex?,
         udp?: {sport, dport, data_len}, tcp?: {sport, dport, flags, seq?, ack?, win?, options_hex?, data_len?},
         icmp?: {type, code, id, seq}, fragment?: {of: PACKET-without-fragment, offset, length}}
Everything is bounded in time. No third-party modules.
"""
import errno
import fcntl
import json
import os
import select
import socket
import struct
import sys
import threading
import time
import array

ETH_P_IP = 0x0800
IP_PKTINFO = 8
IP_RECVERR = 11  # linux/in.h (Python's socket module lacks it)
PACKET_OUTGOING = 4
SOL_PACKET = 263
PACKET_AUXDATA = 8
TP_STATUS_CSUMNOTREADY = 8  # linux/if_packet.h
SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack("!%dH" % (len(data) // 2), data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return (~total) & 0xFFFF


def crc32c(data: bytes) -> int:
    """RFC 9260 appendix B (CRC32c, reflected polynomial 0x82F63B78)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 if crc & 1 else 0)
    return crc ^ 0xFFFFFFFF


def ip2b(a: str) -> bytes:
    return socket.inet_aton(a)


def b2ip(b: bytes) -> str:
    return socket.inet_ntoa(b)


TCP_FLAGS = "FSRPAUEC"


def flag_text(bits: int) -> str:
    return "".join(TCP_FLAGS[i] for i in range(8) if bits & (1 << i))


def flag_bits(text: str) -> int:
    return sum(1 << TCP_FLAGS.index(c) for c in text)


def decode_l4(proto, l4, src, dst, whole, partial=False):
    """Ports and flags of a TCP/UDP/ICMP header; `whole` = the datagram is complete (checksum checkable).

    `partial`: the packet came with CHECKSUM_PARTIAL (TP_STATUS_CSUMNOTREADY, e.g. through a TUN
    device with offloads): the field then holds the folded pseudo-header sum (not complemented),
    which is what is checked — it proves the addresses were patched consistently."""
    out = {}
    if proto in (6, 17) and len(l4) >= 4:
        out["sport"], out["dport"] = struct.unpack("!HH", l4[:4])
        if proto == 6 and len(l4) >= 14:
            out["flags"] = flag_text(l4[13])
            out["tcpseq"] = struct.unpack("!I", l4[4:8])[0]
        if whole and (proto == 6 and len(l4) >= 20 or proto == 17 and len(l4) >= 8):
            field = struct.unpack("!H", l4[16:18] if proto == 6 else l4[6:8])[0]
            if proto == 17 and field == 0:
                out["l4csum"] = "zero"
            else:
                pseudo = ip2b(src) + ip2b(dst) + struct.pack("!BBH", 0, proto, len(l4))
                if partial:
                    folded = (~csum(pseudo)) & 0xFFFF
                    out["l4csum"] = "ok" if field in (folded, 0xFFFF if folded == 0 else folded) else "bad-partial"
                else:
                    out["l4csum"] = "ok" if csum(pseudo + l4) == 0 else "bad"
    elif proto == 1 and len(l4) >= 8:
        t, c = l4[0], l4[1]
        out["type"], out["code"] = t, c
        if whole:
            out["l4csum"] = "ok" if csum(l4) == 0 else "bad"
        if t in (0, 8):
            out["icmpid"], out["seq"] = struct.unpack("!HH", l4[4:8])
        if t == 3 and c == 4:
            out["mtu"] = struct.unpack("!H", l4[6:8])[0]
        if t in (3, 11, 12) and len(l4) >= 28:
            inner = decode_ip(l4[8:], inner=True)
            if inner:
                out["inner"] = inner
    return out


def decode_ip(pkt: bytes, inner=False, partial=False):
    if len(pkt) < 20 or pkt[0] >> 4 != 4:
        return None
    ihl = (pkt[0] & 15) * 4
    total, ident, frag, ttl, proto = struct.unpack("!HHHBB", pkt[2:10])
    src, dst = b2ip(pkt[12:16]), b2ip(pkt[16:20])
    rec = {"src": src, "dst": dst, "proto": proto, "ttl": ttl, "id": ident, "len": total}
    if frag & 0x4000:
        rec["df"] = True
    if frag & 0x2000:
        rec["mf"] = True
    offset = (frag & 0x1FFF) * 8
    if offset:
        rec["offset"] = offset
    if not inner:
        rec["ipcsum"] = "ok" if csum(pkt[:ihl]) == 0 else "bad"
    if offset == 0:
        whole = not inner and not (frag & 0x2000) and total <= len(pkt)
        rec.update(decode_l4(proto, pkt[ihl:total if not inner else len(pkt)], src, dst, whole, partial))
    return rec


# ---------------------------------------------------------------- agent

def agent(spec):
    events = []
    packets = []
    lock = threading.Lock()
    stop = threading.Event()
    deadline = time.time() + float(spec.get("seconds", 20))
    socks = []

    def record(ev):
        with lock:
            events.append(ev)

    for port in spec.get("udp", []):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        s.bind(("0.0.0.0", port))
        socks.append(("udp", port, s))
    for port in spec.get("tcp", []):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(256)
        socks.append(("tcp", port, s))
    sniffer = None
    if spec.get("sniff"):
        sniffer = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
        sniffer.bind((spec["sniff"], 0))
        sniffer.setsockopt(SOL_PACKET, PACKET_AUXDATA, 1)

    def tcp_conn(conn, peer, port):
        conn.settimeout(3)
        data = b""
        try:
            while len(data) < 65536:
                chunk = conn.recv(65536)
                if not chunk:
                    break
                data += chunk
                if data == b"RST":
                    break
        except OSError:
            pass
        record({"proto": "tcp", "port": port, "peer": "%s:%d" % peer, "to": conn.getsockname()[0], "bytes": len(data)})
        try:
            if data == b"RST":
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            else:
                conn.sendall(("seen %s:%05d %d" % (peer[0], peer[1], len(data))).encode())
                conn.shutdown(socket.SHUT_WR)
                conn.settimeout(2)
                try:
                    conn.recv(1)
                except OSError:
                    pass
        except OSError:
            pass
        conn.close()

    def loop():
        fds = [s for _, _, s in socks] + ([sniffer] if sniffer else [])
        kinds = {s.fileno(): (k, p) for k, p, s in socks}
        while not stop.is_set() and time.time() < deadline:
            ready, _, _ = select.select(fds, [], [], 0.05)
            for s in ready:
                if s is sniffer:
                    data, anc, _, addr = s.recvmsg(70000, 256)
                    if addr[2] == PACKET_OUTGOING:
                        continue
                    partial = any(level == SOL_PACKET and typ == PACKET_AUXDATA and len(raw) >= 4
                                  and struct.unpack("=I", raw[:4])[0] & TP_STATUS_CSUMNOTREADY for level, typ, raw in anc)
                    rec = decode_ip(data, partial=partial)
                    if rec:
                        rec["t"] = round(time.time(), 4)
                        with lock:
                            packets.append(rec)
                    continue
                kind, port = kinds[s.fileno()]
                if kind == "udp":
                    # Answer from the address the request was sent to (IP_PKTINFO), as a UDP
                    # service on a multi-homed host must for NAT to match the reply.
                    data, anc, _, peer = s.recvmsg(70000, 256)
                    local = None
                    for level, typ, raw in anc:
                        if level == socket.IPPROTO_IP and typ == IP_PKTINFO:
                            local = raw[8:12]
                    record({"proto": "udp", "port": port, "peer": "%s:%d" % peer, "to": b2ip(local) if local else "?",
                            "bytes": len(data)})
                    reply = ("seen %s:%05d %d" % (peer[0], peer[1], len(data))).encode()
                    info = [(socket.IPPROTO_IP, IP_PKTINFO, struct.pack("=I4s4s", 0, local, b"\0" * 4))] if local else []
                    s.sendmsg([reply], info, 0, peer)
                else:
                    conn, peer = s.accept()
                    threading.Thread(target=tcp_conn, args=(conn, peer, port), daemon=True).start()

    t = threading.Thread(target=loop, daemon=True)
    t.start()
    print("ready", flush=True)
    while time.time() < deadline:
        r, _, _ = select.select([sys.stdin], [], [], max(0.0, deadline - time.time()))
        if r and not sys.stdin.readline():
            break
    time.sleep(0.05)
    stop.set()
    t.join(1)
    with lock:
        print(json.dumps({"events": events, "packets": packets}), flush=True)


# ---------------------------------------------------------------- client

def spoil(p, c):
    """A checksum made wrong on purpose ("bad_csum": true), never 0 (UDP's "none")."""
    return c ^ 0x0100 if p.get("bad_csum") else c


def build_l4(p):
    src, dst = ip2b(p["src"]), ip2b(p["dst"])
    if "udp" in p:
        u = p["udp"]
        data = bytes((i * 7 + 3) & 0xFF for i in range(u.get("data_len", 16)))
        length = 8 + len(data)
        head = struct.pack("!HHHH", u["sport"], u["dport"], length, 0)
        c = csum(src + dst + struct.pack("!BBH", 0, 17, length) + head + data) or 0xFFFF
        return 17, struct.pack("!HHHH", u["sport"], u["dport"], length, spoil(p, c)) + data
    if "tcp" in p:
        t = p["tcp"]
        options = bytes.fromhex(t.get("options_hex", ""))
        options += b"\0" * (-len(options) % 4)  # padded with End of Option List
        data = bytes((i * 5 + 1) & 0xFF for i in range(t.get("data_len", 0)))
        head = struct.pack("!HHIIBBHHH", t["sport"], t["dport"], t.get("seq", 1000) & 0xFFFFFFFF, t.get("ack", 0) & 0xFFFFFFFF,
                           (5 + len(options) // 4) << 4, flag_bits(t["flags"]), t.get("win", 64240), 0, 0) + options
        c = csum(src + dst + struct.pack("!BBH", 0, 6, len(head) + len(data)) + head + data)
        return 6, head[:16] + struct.pack("!H", spoil(p, c)) + head[18:] + data
    if "sctp" in p:
        c = p["sctp"]
        # RFC 9260 section 3.3.2: INIT (type 1) with its fixed parameters, no optional ones.
        chunk = struct.pack("!BBHIIHHI", 1, 0, 20, c.get("tag", 0x1234567), 65535, 10, 10, 1)
        head = struct.pack("!HHII", c["sport"], c["dport"], 0, 0) + chunk
        return 132, head[:8] + struct.pack("<I", crc32c(head)) + head[12:]
    if "icmp" in p:
        i = p["icmp"]
        data = bytes(x & 0xFF for x in range(i.get("data_len", 16)))
        head = struct.pack("!BBHHH", i["type"], i["code"], 0, i["id"], i["seq"]) + data
        c = csum(head)
        return 1, head[:2] + struct.pack("!H", spoil(p, c)) + head[4:]
    return p["proto"], bytes.fromhex(p.get("payload_hex", "00" * 16))


def build_ip(p):
    if "fragment" in p:
        f = p["fragment"]
        whole = f["of"]
        proto, l4 = build_l4(whole)
        part = l4[f["offset"]:f["offset"] + f["length"]]
        more = f["offset"] + f["length"] < len(l4)
        q = dict(whole)
        q.update({"mf": more or f.get("mf", False), "offset": f["offset"]})
        return ip_header(q, proto, len(part)) + part
    proto, l4 = build_l4(p)
    return ip_header(p, proto, len(l4)) + l4


def ip_header(p, proto, l4len):
    frag = (p.get("offset", 0) // 8) | (0x4000 if p.get("df") else 0) | (0x2000 if p.get("mf") else 0)
    h = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + l4len, p.get("id", 4242), frag, p.get("ttl", 64), proto,
                    0, ip2b(p["src"]), ip2b(p["dst"]))
    return h[:10] + struct.pack("!H", csum(h)) + h[12:]


def recv_errqueue(s):
    """An ICMP error the kernel matched to this socket (IP_RECVERR): sock_extended_err + offender."""
    try:
        _, anc, _, _ = s.recvmsg(2048, 512, socket.MSG_ERRQUEUE)
    except OSError:
        return None
    for level, typ, data in anc:
        if level == socket.IPPROTO_IP and typ == 11 and len(data) >= 16:  # IP_RECVERR
            ee_errno, origin, etype, ecode, _pad, info, _data = struct.unpack("=IBBBBII", data[:16])
            offender = b2ip(data[20:24]) if len(data) >= 24 else None
            return {"errno": errno.errorcode.get(ee_errno, ee_errno), "origin": origin, "type": etype, "code": ecode,
                    "info": info, "from": offender}
    return None


def client(actions):
    results = []
    for a in actions:
        kind = a["kind"]
        r = {"kind": kind}
        try:
            if kind == "sleep":
                time.sleep(a["seconds"])
            elif kind == "udp":
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.setsockopt(socket.IPPROTO_IP, IP_RECVERR, 1)
                if "ttl" in a:
                    s.setsockopt(socket.IPPROTO_IP, socket.IP_TTL, a["ttl"])
                # IP_MTU_DISCOVER: IP_PMTUDISC_DO (2) sets DF, IP_PMTUDISC_DONT (0) clears it.
                s.setsockopt(socket.IPPROTO_IP, 10, 2 if a.get("df") else 0)
                s.bind((a["src"], a["sport"]))
                s.sendto(bytes(a.get("size", 16)), (a["dst"], a["dport"]))
                end = time.time() + a.get("wait", 1.0)
                while time.time() < end:
                    rd, _, ex = select.select([s], [], [s], max(0.0, end - time.time()))
                    if not rd and not ex:
                        break
                    err = recv_errqueue(s)
                    if err:
                        r["error"] = err
                        break
                    try:
                        data = s.recv(2048, socket.MSG_DONTWAIT)
                        r["reply"] = data.decode(errors="replace")
                        break
                    except OSError as e:
                        r["error"] = recv_errqueue(s) or {"errno": errno.errorcode.get(e.errno, e.errno)}
                        break
                s.close()
            elif kind == "tcp":
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.settimeout(a.get("wait", 3.0))
                s.bind((a["src"], a["sport"]))
                try:
                    s.connect((a["dst"], a["dport"]))
                    if a.get("close") == "rst":
                        # The server answers "RST" with a reset; no FIN from here to race it.
                        s.sendall(b"RST")
                    else:
                        s.sendall(bytes(a.get("size", 16)))
                        s.shutdown(socket.SHUT_WR)
                    data = b""
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    r["reply"] = data.decode(errors="replace")
                except OSError as e:
                    r["error"] = {"errno": errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__}
                s.close()
            elif kind == "http":
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.settimeout(a.get("wait", 3.0))
                s.bind((a["src"], a["sport"]))
                try:
                    s.connect((a["dst"], a["dport"]))
                    s.sendall(("GET %s HTTP/1.0\r\nHost: %s\r\n\r\n" % (a["path"], a["dst"])).encode())
                    data = b""
                    while True:
                        chunk = s.recv(4096)
                        if not chunk:
                            break
                        data += chunk
                    text = data.decode(errors="replace")
                    status = text.split("\r\n", 1)[0]
                    body = text.split("\r\n\r\n", 1)[1] if "\r\n\r\n" in text else ""
                    r["reply"] = "%s | %s" % (status, body.strip())
                except OSError as e:
                    r["error"] = {"errno": errno.errorcode.get(e.errno, str(e)) if e.errno else type(e).__name__}
                s.close()
            elif kind == "raw":
                s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
                s.setsockopt(socket.IPPROTO_IP, socket.IP_HDRINCL, 1)
                sent = 0
                for p in a["packets"]:
                    pkt = build_ip(p)
                    try:
                        s.sendto(pkt, (p["dst"], 0))
                        sent += 1
                    except OSError as e:
                        r.setdefault("errors", []).append(errno.errorcode.get(e.errno, e.errno))
                    time.sleep(a.get("gap", 0.01))
                s.close()
                r["sent"] = sent
        except OSError as e:
            r["error"] = {"errno": errno.errorcode.get(e.errno, e.errno) if e.errno else str(e)}
        results.append(r)
    print(json.dumps(results), flush=True)


def txcsum_off(devices):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for dev in devices:
        buf = array.array("B", struct.pack("II", ETHTOOL_STXCSUM, 0))
        addr, _ = buf.buffer_info()
        fcntl.ioctl(s.fileno(), SIOCETHTOOL, struct.pack("16sP", dev.encode(), addr))
    print("ok", flush=True)


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "agent":
        agent(json.loads(sys.argv[2]))
    elif mode == "client":
        client(json.loads(sys.argv[2]))
    elif mode == "txcsum-off":
        txcsum_off(sys.argv[2:])
    else:
        sys.exit("usage: probe.py agent|client|txcsum-off ...")
