//! The MQTT wire format: every control packet of versions 3.1, 3.1.1 and 5.0.
