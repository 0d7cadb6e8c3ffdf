"""Values as Frappe reads and writes them: timestamps, dates, flags, random names."""

from __future__ import annotations

import datetime as dt
import random
import string
from typing import Any

from provisioning.engines.errors import (
    EngineValidationError,
)


def now_stamp() -> str:
    return dt.datetime.now().strftime("%Y-%m-%d %H:%M:%S.%f")


def parse_date(value: Any, label: str) -> dt.date | None:
    if value in (None, ""):
        return None
    try:
        return dt.date.fromisoformat(str(value)[:10])
    except ValueError:
        raise EngineValidationError(f"{label} {value} is not a valid date", status=417, exc_type="ValidationError")


def fmt_date(day: dt.date) -> str:
    # The recorded site's date format (mm-dd-yyyy) in messages.
    return day.strftime("%m-%d-%Y")


def random_name() -> str:
    return "".join(random.choices(string.ascii_lowercase + string.digits, k=10))


def truthy(value) -> bool:
    return str(value).strip().lower() in {"1", "true"}


def check_flag(value, message):
    if value in (None, ""):
        return 0
    if value in (0, 1, True, False) or str(value) in {"0", "1"}:
        return int(value)
    raise EngineValidationError(message, status=417, exc_type="ValidationError")


def add_year(day: dt.date) -> dt.date:
    try:
        return day.replace(year=day.year + 1)
    except ValueError:  # 29 February
        return day.replace(year=day.year + 1, day=28)
