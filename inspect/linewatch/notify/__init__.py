"""notify: the store's verdicts and alarms pushed to plant systems, as signed HTTP hooks and over MQTT.

`events` (the store as outbox), `state` (delivery state, `notify.db`), `hooks` (HTTP), `mqtt`, `process`.
"""
