"""The original service's design, for comparison: one thread reads ``password_reset_events``
from Redis Pub/Sub and, for each event, builds the email and opens a new SMTP connection
(connect, EHLO, MAIL, RCPT, DATA, QUIT) with smtplib.

Run: ``python -m bench.baseline --redis URL --channel C --smtp 127.0.0.1:2525``
(prints ``READY`` once subscribed).
"""

from __future__ import annotations

import argparse
import json
import smtplib
from email.message import EmailMessage

import redis

_HTML = """<html><body style="font-family: Arial, sans-serif">
<h2>Password reset</h2><p>Hello {email},</p>
<p>Your password reset code is: <strong>{code}</strong></p>
<p>This code expires in 15 minutes. If you did not ask for it, ignore this email.</p>
</body></html>"""


def build(event: dict[str, str], sender: str) -> EmailMessage:
    message = EmailMessage()
    message["Subject"] = "Password reset code"
    message["From"] = sender
    message["To"] = event["email"]
    message.set_content(f"Your password reset code is: {event['code']}")
    message.add_alternative(_HTML.format(email=event["email"], code=event["code"]),
                            subtype="html")
    return message


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--redis", required=True)
    parser.add_argument("--channel", default="password_reset_events")
    parser.add_argument("--smtp", required=True, help="host:port")
    parser.add_argument("--sender", default="noreply@shop.example.com")
    args = parser.parse_args()
    host, _, port = args.smtp.rpartition(":")
    client = redis.Redis.from_url(args.redis)
    pubsub = client.pubsub(ignore_subscribe_messages=True)  # type: ignore[no-untyped-call]
    pubsub.subscribe(args.channel)
    pubsub.get_message(timeout=1)  # the subscribe confirmation
    print("READY", flush=True)
    for item in pubsub.listen():
        if item["type"] != "message":
            continue
        event = json.loads(item["data"])
        message = build(event, args.sender)
        with smtplib.SMTP(host, int(port), timeout=30) as conn:
            conn.sendmail(args.sender, [event["email"]], message.as_bytes())


if __name__ == "__main__":
    main()
