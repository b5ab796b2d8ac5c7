"""``python -m server`` / ``pyllamaam serve``: run the app under uvicorn."""

from __future__ import annotations

import logging
import sys

from pydantic import ValidationError


def main(argv: list[str] | None = None) -> int:
    """Parse flags (over ``PYLLAMAAM_*`` variables), then serve until interrupted. Returns the exit code."""
    import uvicorn

    from pyllamaam.errors import ConfigError

    from .app import create_app
    from .settings import parse_args

    try:
        settings = parse_args(argv)
    except ValidationError as err:
        print(f"pyllamaam serve: bad settings:\n{err}", file=sys.stderr)
        return 2
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("pyllamaam.native").setLevel(logging.WARNING)  # llama.cpp's loader chatter
    try:
        app = create_app(settings)
    except ConfigError as err:  # e.g. an unreadable --api-key-file
        print(f"pyllamaam serve: {err}", file=sys.stderr)
        return 2
    uvicorn.run(
        app, host=settings.host, port=settings.port, log_level=settings.log_level.lower(), timeout_graceful_shutdown=5
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
