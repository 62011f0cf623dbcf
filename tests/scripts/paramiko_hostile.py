"""An authenticated SSH client that misbehaves on purpose at the packet
level, for tests/hostile.rs: only what russh's client cannot be made to
send (ARCHITECTURE.md, "Per SSH connection"; the rest is done in process
by tests/common/russh_client.rs).

paramiko's Transport sends any message through `_send_message` (encrypted
and sequenced like every other), so each misbehaviour below is a few
messages built by hand on top of a normal login (`random@`, accepted at
`none`). Everything the server answers that the test looks for is
printed on stdout as one line:

    session TEXT                          what the session channel said
    url URL                               the tunnel URL the login banner gave
    unread-channel                        a forwarded channel left unread
    inspector STATUS-LINE                 the inspector's answer
    disconnected CODE TEXT                the server's disconnect message
    closed                                the connection ended
    done                                  the misbehaviour was sent
    turned-away TEXT                      no login: the server refused it

Usage: paramiko_hostile.py --port PORT [--source IP] MODE [--count N]
       [--origin-port P]
"""

import argparse
import socket
import sys
import threading
import time

import paramiko
from paramiko.common import (
    cMSG_CHANNEL_DATA,
    cMSG_CHANNEL_WINDOW_ADJUST,
    cMSG_IGNORE,
    MSG_KEXINIT,
)

OUT = threading.Lock()


def say(*words):
    with OUT:
        print(" ".join(str(w) for w in words), flush=True)


def tell_disconnect(transport, message):
    code = message.get_int()
    say("disconnected", code, message.get_text())


# The run loop calls `_parse_disconnect` by name.
paramiko.Transport._parse_disconnect = tell_disconnect


def connect(port, source):
    sock = socket.socket()
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    transport = paramiko.Transport(sock)
    transport.start_client(timeout=10)
    transport.auth_none("random")
    if not transport.is_authenticated():
        sys.exit("paramiko_hostile: not authenticated")
    for word in (transport.get_banner() or b"").decode("utf-8", "replace").split():
        if word.startswith("https://"):
            say("url", word)
    return transport


def send(transport, build):
    """One hand-built message, sent in sequence with everything else."""
    m = paramiko.Message()
    build(m)
    transport._send_message(m)


def data_packet(transport, channel, payload):
    def build(m):
        m.add_byte(cMSG_CHANNEL_DATA)
        m.add_int(channel.remote_chanid)
        m.add_string(payload)

    send(transport, build)


def window_adjust(transport, channel, amount):
    def build(m):
        m.add_byte(cMSG_CHANNEL_WINDOW_ADJUST)
        m.add_int(channel.remote_chanid)
        m.add_int(amount)

    send(transport, build)


def session_output(channel):
    """Everything the session channel says, as `session` lines."""

    def read():
        while True:
            data = channel.recv(65536)
            if not data:
                return
            for line in data.decode("utf-8", "replace").splitlines():
                if line.strip():
                    say("session", line.strip())

    threading.Thread(target=read, daemon=True).start()


def open_session(transport):
    channel = transport.open_session(timeout=10)
    channel.set_combine_stderr(True)
    session_output(channel)
    return channel


def inspector(transport):
    return transport.open_channel("direct-tcpip", ("localhost", 4040), ("127.0.0.1", 50000), timeout=10)


# --- the misbehaviours -------------------------------------------------------


def window_overflow(transport, count):
    """A window adjust of 2^32-1 on top of the window the client gave."""
    channel = open_session(transport)
    for _ in range(count):
        window_adjust(transport, channel, 0xFFFFFFFF)


def oversized(transport, count):
    """A data packet twice the maximum packet size the server gave."""
    channel = open_session(transport)
    size = channel.out_max_packet_size * 2
    for _ in range(count):
        data_packet(transport, channel, b"y" * size)


def after_close(transport, count):
    """A channel closed, then data on it anyway; then a normal request."""
    channel = inspector(transport)
    channel.close()
    for _ in range(count):
        data_packet(transport, channel, b"z" * 16384)
    probe = inspector(transport)
    probe.sendall(b"GET /api/entries HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
    answer = b""
    while True:
        data = probe.recv(65536)
        if not data:
            break
        answer += data
    say("inspector", answer.split(b"\r\n", 1)[0].decode())
    return lambda: True


def stall_kex(transport, count, origin_port):
    """A forward, then a key exchange started and never finished, with
    IGNORE packets (allowed during one) to look alive."""
    transport.request_port_forward("", 80, handler=lambda *a: None)
    transport._handler_table = dict(paramiko.Transport._handler_table)
    transport._handler_table[MSG_KEXINIT] = lambda *a: None
    transport._send_kex_init()
    say("done")
    for _ in range(count):
        if not transport.is_active():
            return
        send(transport, lambda m: (m.add_byte(cMSG_IGNORE), m.add_string(b"")))
        time.sleep(0.5)


def relay(channel, origin_port):
    """One forwarded connection relayed to the origin, as ssh -R does."""
    origin = socket.create_connection(("127.0.0.1", origin_port), timeout=10)

    def upstream():
        try:
            while True:
                data = channel.recv(65536)
                if not data:
                    break
                origin.sendall(data)
            origin.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    threading.Thread(target=upstream, daemon=True).start()
    try:
        while True:
            data = origin.recv(65536)
            if not data:
                break
            channel.sendall(data)
    except OSError:
        pass
    channel.close()


def never_read(transport, count, origin_port):
    """A forward whose first forwarded channel is never read (its window
    is never adjusted once full); the others are relayed to the origin."""
    kept = []

    def on_forwarded(channel, _origin, _server):
        if not kept:
            kept.append(channel)
            say("unread-channel")
            return
        threading.Thread(target=relay, args=(channel, origin_port), daemon=True).start()

    transport.request_port_forward("", 80, handler=on_forwarded)
    say("done")
    deadline = time.time() + count
    while transport.is_active() and time.time() < deadline:
        time.sleep(0.1)


MODES = {
    "window-overflow": window_overflow,
    "oversized": oversized,
    "after-close": after_close,
}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--count", type=int, default=1000)
    p.add_argument("--origin-port", type=int, default=0)
    p.add_argument("--source", default="127.0.0.1", help="the local address to connect from")
    p.add_argument("mode", choices=sorted(MODES) + ["stall-kex", "never-read"])
    args = p.parse_args()
    try:
        transport = connect(args.port, args.source)
    except (paramiko.SSHException, EOFError, OSError) as err:
        # A limit of the IP (a block, the connection rate) said no first.
        say("turned-away", str(err).replace("\n", " "))
        say("closed")
        return
    answered = None
    try:
        if args.mode == "stall-kex":
            stall_kex(transport, args.count, args.origin_port)
        elif args.mode == "never-read":
            never_read(transport, args.count, args.origin_port)
        else:
            answered = MODES[args.mode](transport, args.count)
            say("done")
        # Wait (bounded) for the server's answer to it all: the end of the
        # connection, unless the mode says what else answers it.
        answered = answered or (lambda: False)
        deadline = time.time() + 30
        while transport.is_active() and not answered() and time.time() < deadline:
            time.sleep(0.05)
    except (paramiko.SSHException, EOFError, OSError) as err:
        say("error", type(err).__name__, err)
    say("closed")
    transport.close()


if __name__ == "__main__":
    main()
