"""Writes conversations.jsonl: the support history of Acme Networks, a fictional company.

Run: python examples/support/generate.py  (deterministic; the output is committed)

Each fact is one a pre-trained model cannot know (prices, policies, error
codes, product names); customers ask about it in several ways and agents answer
in several ways, so that a fine-tuned model has to learn the fact, not a string.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

SYSTEM = "You are the support assistant of Acme Networks."

FACTS = [
    (
        [
            "How much does the Zephyr X2 router cost?",
            "What's the price of the Zephyr X2?",
            "zephyr x2 price?",
            "I want to buy the Zephyr X2 router. How much is it?",
            "Can you tell me what a Zephyr X2 costs?",
        ],
        [
            "The Zephyr X2 router costs 129 euros.",
            "The Zephyr X2 is 129 euros, VAT included.",
            "It costs 129 euros. The Zephyr X2 ships with a 3-year warranty.",
        ],
    ),
    (
        [
            "How much is the Zephyr X2 Mini?",
            "What does the Zephyr Mini cost?",
            "price of the x2 mini please",
            "Is the Zephyr X2 Mini cheaper than the X2?",
        ],
        [
            "The Zephyr X2 Mini costs 79 euros.",
            "Yes, the Zephyr X2 Mini is 79 euros, 50 euros less than the Zephyr X2.",
        ],
    ),
    (
        [
            "What is your refund policy?",
            "Can I return my router?",
            "How long do I have to send a product back?",
            "I changed my mind, can I get my money back?",
            "refund window?",
        ],
        [
            "You can return any Acme product within 30 days of delivery for a full refund, "
            "in its original packaging.",
            "Our refund window is 30 days from delivery. Keep the original packaging.",
        ],
    ),
    (
        [
            "My router shows error E42. What does it mean?",
            "What is error code E42?",
            "The display says E42 and nothing works.",
            "E42 on my Zephyr, help",
            "I got E42 after an update.",
        ],
        [
            "Error E42 means the firmware update was interrupted. Hold the reset pin for "
            "10 seconds, then reinstall the firmware from the Acme Home app.",
            "E42 is an interrupted firmware update. Hold reset for 10 seconds and reinstall "
            "the firmware with the Acme Home app.",
        ],
    ),
    (
        [
            "What does error E17 mean?",
            "My router says E17.",
            "E17 error, no internet",
            "Why do I see E17 on the front panel?",
        ],
        [
            "Error E17 means no WAN cable is detected. Plug the internet cable into the "
            "yellow WAN port.",
            "E17 is a missing WAN cable: check that the internet cable is in the yellow port.",
        ],
    ),
    (
        [
            "How long is the warranty?",
            "What warranty do Acme routers have?",
            "Is my Zephyr still under warranty after two years?",
            "warranty length?",
        ],
        [
            "Acme routers have a 3-year warranty, or 5 years with the Acme Pro plan.",
            "The warranty lasts 3 years (5 years on the Acme Pro plan), so yes.",
        ],
    ),
    (
        [
            "When is support open?",
            "What are your support hours?",
            "Can I call you on Saturday?",
            "opening hours of the help desk?",
        ],
        [
            "Support is open Monday to Friday 8:00 to 20:00 CET and Saturday 9:00 to 14:00.",
            "Yes, on Saturday from 9:00 to 14:00; on weekdays we are open 8:00 to 20:00 CET.",
        ],
    ),
    (
        [
            "How much is a Nimbus Mesh node?",
            "What does the Nimbus mesh cost?",
            "How many Nimbus nodes can I add?",
            "nimbus node price",
        ],
        [
            "A Nimbus Mesh node costs 59 euros, and you can add up to 8 nodes.",
            "Each Nimbus Mesh node is 59 euros; one network takes up to 8 of them.",
        ],
    ),
    (
        [
            "Is shipping free?",
            "How long does delivery take?",
            "What does shipping cost?",
            "when will my order arrive?",
        ],
        [
            "Shipping is free on orders over 50 euros and takes 2 business days in the EU.",
            "Delivery takes 2 business days in the EU, free above 50 euros.",
        ],
    ),
    (
        [
            "What is Acme Care Plus?",
            "How much is Care Plus?",
            "Do you have an extended protection plan?",
            "care plus price?",
        ],
        [
            "Acme Care Plus costs 4.99 euros a month and replaces a faulty device the next "
            "business day.",
            "Care Plus is 4.99 euros per month, with a next-business-day replacement.",
        ],
    ),
    (
        [
            "How do I open the router's admin page?",
            "What is the admin address of the Zephyr?",
            "I can't find the router settings page.",
            "router admin ip?",
        ],
        [
            "Open http://192.168.77.1 in a browser; the admin password is on the label under "
            "the router.",
            "The admin page is at 192.168.77.1. The password is printed on the bottom label.",
        ],
    ),
    (
        [
            "How do I factory reset my router?",
            "How can I reset the Zephyr to factory settings?",
            "reset to defaults?",
            "I forgot my admin password, how do I reset?",
        ],
        [
            "Hold the pin button on the back for 15 seconds until the light blinks amber.",
            "Press and hold the reset pin for 15 seconds; the light blinks amber when it is done.",
        ],
    ),
]

OPENERS = ["", "Hi! ", "Hello, ", "Good morning. ", "Quick question: "]
THANKS = ["Thanks!", "Great, thank you.", "Perfect, thanks a lot."]
CLOSINGS = ["You're welcome!", "Glad to help!", "Happy to help, have a nice day."]


def conversations(seed: int = 7) -> list[dict[str, object]]:
    rng = random.Random(seed)
    result: list[dict[str, object]] = []
    for questions, answers in FACTS:
        for question in questions:
            for _ in range(2):
                messages = []
                if rng.random() < 0.5:
                    messages.append({"role": "system", "content": SYSTEM})
                messages.append({"role": "user", "content": rng.choice(OPENERS) + question})
                messages.append({"role": "assistant", "content": rng.choice(answers)})
                if rng.random() < 0.3:
                    messages.append({"role": "user", "content": rng.choice(THANKS)})
                    messages.append({"role": "assistant", "content": rng.choice(CLOSINGS)})
                result.append({"messages": messages})
    rng.shuffle(result)
    return result


def main() -> None:
    target = Path(__file__).with_name("conversations.jsonl")
    unique = {json.dumps(c, sort_keys=True): c for c in conversations()}
    with target.open("w", encoding="utf-8") as handle:
        for conversation in unique.values():
            handle.write(json.dumps(conversation, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
