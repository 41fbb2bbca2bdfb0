"""Eclipse Paho Python (paho-mqtt 2.x) against a running roost.

Env: ROOST_TCP_PORT, ROOST_WS_PORT, optional ROOST_TLS_PORT, ROOST_WSS_PORT,
ROOST_CA, and RUN_ID. Prints one "ok - NAME" / "not ok - NAME: why" line per
check, for MQTT 3.1.1 and 5 over TCP and WebSocket (and TLS/WSS when given).
"""

import os
import queue
import socket
import sys
import threading
import traceback

import paho.mqtt
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HOST = "127.0.0.1"
WAIT = 10.0
RUN = os.environ["RUN_ID"]
CA = os.environ.get("ROOST_CA")

assert paho.mqtt.__version__.startswith("2."), paho.mqtt.__version__

TRANSPORTS = {"tcp": int(os.environ["ROOST_TCP_PORT"]), "ws": int(os.environ["ROOST_WS_PORT"])}
if CA:
    TRANSPORTS["tls"] = int(os.environ["ROOST_TLS_PORT"])
    TRANSPORTS["wss"] = int(os.environ["ROOST_WSS_PORT"])
PROTOCOLS = {"3.1.1": mqtt.MQTTv311, "5": mqtt.MQTTv5}

_ids = iter(range(1_000_000))


class Check(Exception):
    pass


class Conn:
    """One paho client on its own network thread, with its messages in a queue."""

    def __init__(self, transport, version, will=None):
        self.version = version
        self.messages = queue.Queue()
        self.connected = threading.Event()
        self.subscribed = queue.Queue()
        self.connack = None
        ws = transport in ("ws", "wss")
        self.c = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"paho-{RUN}-{next(_ids)}",
            protocol=PROTOCOLS[version],
            transport="websockets" if ws else "tcp",
            # A lost connection here is always on purpose; reconnecting would
            # hide what the test is looking at.
            reconnect_on_failure=False,
        )
        if ws:
            self.c.ws_set_options(path="/mqtt")
        if transport in ("tls", "wss"):
            self.c.tls_set(ca_certs=CA)
        if will:
            self.c.will_set(*will)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = lambda c, u, mid, codes, props: self.subscribed.put(codes)
        self.c.on_message = lambda c, u, msg: self.messages.put(msg)
        self.c.connect(HOST, TRANSPORTS[transport], keepalive=30)
        self.c.loop_start()
        if not self.connected.wait(WAIT):
            self.close()
            raise Check("no CONNACK")
        if self.connack.is_failure:
            self.close()
            raise Check(f"CONNACK refused: {self.connack}")

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self.connack = reason_code
        self.connected.set()

    def subscribe(self, topic, qos):
        self.c.subscribe(topic, qos)
        try:
            codes = self.subscribed.get(timeout=WAIT)
        except queue.Empty:
            raise Check(f"no SUBACK for {topic}")
        if [int(getattr(code, "value", code)) for code in codes] != [qos]:
            raise Check(f"SUBACK for {topic} granted {codes}, wanted QoS {qos}")

    def publish(self, topic, payload, qos, retain=False, properties=None):
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        # For QoS 1/2 this returns only after PUBACK / PUBCOMP.
        info.wait_for_publish(timeout=WAIT)
        if not info.is_published():
            raise Check(f"publish QoS {qos} to {topic} not acknowledged")

    def next_message(self):
        try:
            return self.messages.get(timeout=WAIT)
        except queue.Empty:
            raise Check("no message arrived")

    def close(self):
        self.c.disconnect()
        self.c.loop_stop()

    def drop(self):
        """Loses the connection without DISCONNECT, as a crashed client would."""
        self.c.loop_stop()
        sock = self.c.socket()
        # paho's WebSocket wrapper keeps the TCP socket in _socket.
        raw = getattr(sock, "_socket", sock)
        raw.shutdown(socket.SHUT_RDWR)
        raw.close()


def topic(name):
    return f"roost/{RUN}/paho/{name}"


def check_qos(transport, version, qos):
    t = topic(f"{transport}/{version}/qos{qos}")
    sub = Conn(transport, version)
    pub = Conn(transport, version)
    try:
        sub.subscribe(t, 2)
        pub.publish(t, f"qos{qos}".encode(), qos)
        msg = sub.next_message()
        got = (msg.topic, msg.payload, msg.qos, msg.retain)
        want = (t, f"qos{qos}".encode(), qos, False)
        if got != want:
            raise Check(f"got {got}, wanted {want}")
    finally:
        sub.close()
        pub.close()


def check_retained(transport, version):
    t = topic(f"{transport}/{version}/retained")
    pub = Conn(transport, version)
    try:
        pub.publish(t, b"kept", 1, retain=True)
    finally:
        pub.close()
    late = Conn(transport, version)
    try:
        late.subscribe(t, 1)
        msg = late.next_message()
        got = (msg.topic, msg.payload, msg.qos, msg.retain)
        if got != (t, b"kept", 1, True):
            raise Check(f"late subscriber got {got}")
        # Leave nothing retained behind for other checks.
        late.publish(t, b"", 1, retain=True)
    finally:
        late.close()


def check_will(transport, version):
    t = topic(f"{transport}/{version}/will")
    watcher = Conn(transport, version)
    try:
        watcher.subscribe(t, 1)
        victim = Conn(transport, version, will=(t, b"gone", 1, False))
        victim.drop()
        msg = watcher.next_message()
        got = (msg.topic, msg.payload, msg.qos)
        if got != (t, b"gone", 1):
            raise Check(f"watcher got {got}")
    finally:
        watcher.close()


def check_v5_properties(transport):
    t = topic(f"{transport}/5/props")
    sub = Conn(transport, "5")
    pub = Conn(transport, "5")
    try:
        sub.subscribe(t, 1)
        props = Properties(PacketTypes.PUBLISH)
        props.UserProperty = [("colour", "blue")]
        props.ContentType = "text/plain"
        pub.publish(t, b"five", 1, properties=props)
        msg = sub.next_message()
        got = (getattr(msg.properties, "UserProperty", None), getattr(msg.properties, "ContentType", None))
        if got != ([("colour", "blue")], "text/plain"):
            raise Check(f"properties arrived as {got}")
    finally:
        sub.close()
        pub.close()


def main():
    checks = []
    for transport in TRANSPORTS:
        for version in PROTOCOLS:
            if transport in ("tcp", "ws"):
                for qos in (0, 1, 2):
                    checks.append((f"paho {transport} v{version} qos{qos} round trip", check_qos, (transport, version, qos)))
                checks.append((f"paho {transport} v{version} retained", check_retained, (transport, version)))
                checks.append((f"paho {transport} v{version} will on abrupt close", check_will, (transport, version)))
            else:
                checks.append((f"paho {transport} v{version} qos2 round trip", check_qos, (transport, version, 2)))
        if transport in ("tcp", "ws"):
            checks.append((f"paho {transport} v5 user property and content type", check_v5_properties, (transport,)))
    failed = 0
    for name, fn, args in checks:
        try:
            fn(*args)
            print(f"ok - {name}", flush=True)
        except Check as e:
            failed += 1
            print(f"not ok - {name}: {e}", flush=True)
        except Exception as e:  # a client library error is a failed check too
            failed += 1
            print(f"not ok - {name}: {type(e).__name__}: {e}", flush=True)
            traceback.print_exc(file=sys.stdout)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
