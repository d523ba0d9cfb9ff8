"""notify: the store's verdicts and alarms pushed to plant systems, as signed HTTP hooks and over MQTT.

`events` (the store as outbox), `hooks` (HTTP), `mqtt`, `process`; the delivery state it keeps (`notify.db`)
is `store.delivery`, which the api reads.
"""
