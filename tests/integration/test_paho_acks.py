"""The paho collector's batched PUBACKs are taken by a real mosquitto: nothing acknowledged is redelivered."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from collector.paho_client import send_acks
from tests.conftest import MosquittoBroker

pytestmark = pytest.mark.integration


class Subscriber:
    """A manual-ack QoS 1 subscriber with a persistent session, recording (mid, payload) as messages arrive."""

    def __init__(self, port: int, protocol: int) -> None:
        self.received: list[tuple[int, bytes]] = []
        self.subscribed = threading.Event()
        kwargs = {} if protocol == paho.MQTTv5 else {"clean_session": False}
        self.client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id="ack-test", protocol=protocol, manual_ack=True, **kwargs
        )
        self.client.on_message = lambda _c, _u, msg: self.received.append((msg.mid, msg.payload))
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_connect = lambda c, *_a: c.subscribe("t/#", qos=1)
        if protocol == paho.MQTTv5:
            from paho.mqtt.packettypes import PacketTypes
            from paho.mqtt.properties import Properties

            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = 3600
            self.client.connect("127.0.0.1", port, clean_start=False, properties=props)
        else:
            self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        assert self.subscribed.wait(5), "no SUBACK from mosquitto"

    def wait_for(self, count: int, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while len(self.received) < count and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(self.received) >= count, f"received {len(self.received)} of {count}"

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.mark.parametrize("protocol", [paho.MQTTv311, paho.MQTTv5], ids=["3.1.1", "5"])
def test_acknowledged_messages_are_not_redelivered_and_the_rest_are(mosquitto: MosquittoBroker, protocol: int):
    publisher = paho.Client(CallbackAPIVersion.VERSION2, client_id="ack-pub")
    publisher.connect("127.0.0.1", mosquitto.port)
    publisher.loop_start()

    first = Subscriber(mosquitto.port, protocol)
    for i in range(300):
        publisher.publish(f"t/{i % 7}", str(i).encode(), qos=1).wait_for_publish(5)
    first.wait_for(300)
    acked = first.received[:250]
    assert send_acks(first.client, [(mid, 1) for mid, _ in acked]) == 250
    time.sleep(0.5)  # the PUBACK run leaves through paho's thread; give the broker time to take it
    first.close()

    second = Subscriber(mosquitto.port, protocol)
    second.wait_for(50)
    time.sleep(0.5)  # anything else mosquitto wanted to redeliver has arrived by now
    redelivered = sorted(int(p) for _, p in second.received)
    second.close()
    publisher.loop_stop()
    assert redelivered == list(range(250, 300)), "the broker must redeliver exactly the 50 unacknowledged messages"
