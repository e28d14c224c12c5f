"""Send a batch to the local Events API with the official mParticle Python SDK (only its host changes).

    .venv/bin/python scripts/send_events.py --key KEY --secret SECRET --email someone@example.com \
        --status Premium --city Paris

The user enters "Potential Parisians" of the demo when status is Premium and the video was about Paris.
"""

from __future__ import annotations

import argparse
import uuid

import mparticle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="http://127.0.0.1:8000/v2")
    parser.add_argument("--key", required=True)
    parser.add_argument("--secret", required=True)
    parser.add_argument("--email", required=True)
    parser.add_argument("--status", default="Premium")
    parser.add_argument("--city", default="Paris")
    args = parser.parse_args()

    config = mparticle.Configuration()
    config.api_key, config.api_secret, config.host = args.key, args.secret, args.host
    batch = mparticle.Batch()
    batch.environment = "development"
    batch.source_request_id = str(uuid.uuid4())
    identities = mparticle.UserIdentities()
    identities.email = args.email
    batch.user_identities = identities
    batch.user_attributes = {"status": args.status}
    video = mparticle.AppEvent("Destination Intro", "media")
    video.custom_attributes = {"city": args.city}
    batch.events = [video]
    mparticle.EventsApi(config).upload_events(batch)
    print(f"sent: {args.email} status={args.status} watched Destination Intro about {args.city}")


if __name__ == "__main__":
    main()
