"""``email-service bounces``: the SMTP/LMTP receiver of delivery reports (an adapter beside
``service`` and ``workers``; it imports only ``mailcore``)."""
