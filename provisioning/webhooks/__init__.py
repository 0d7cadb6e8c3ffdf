"""Webhook deliveries: the outbox rows (:mod:`.models`), the sender and the dispatcher (:mod:`.delivery`), and the
guard on where a webhook may go (:mod:`.targets`). Rows are written by :mod:`provisioning.webhooks.outbox`."""
