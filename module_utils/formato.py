"""How a person in the procedure reads numbers, dates and times: Mexican Spanish (es-MX), procedure-local time.

Pure code (stdlib + the project's sla module for the procedure's time zone): no Ansible import. Used by the KPI
report, the Mesa de Servicios board and the oficio de respuesta, so a number or a moment reads the same everywhere.

- numbers: comma for thousands, point for decimals (1,000; 10.5); at most `decimals` decimals, trailing zeros cut
- percentages: "10.5 %" (a space before the sign, as the Secretaría's documents write it)
- dates: "1 de diciembre de 2026"; moments: "1 de diciembre de 2026, 14:05" in the procedure's zone (a stored
  instant in UTC or with any offset is shown at the local hour)
"""
from __future__ import annotations

import datetime as dt
import math

from ansible.module_utils.sla import to_datetime

MESES = ("enero", "febrero", "marzo", "abril", "mayo", "junio", "julio", "agosto", "septiembre", "octubre",
         "noviembre", "diciembre")
DIAS = ("lunes", "martes", "miércoles", "jueves", "viernes", "sábado", "domingo")
SIN_DATO = "s/d"


def numero(value, decimals: int = 2) -> str:
    """1234567 -> '1,234,567'; 10.50 -> '10.5'; None -> 's/d'."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return SIN_DATO
    if isinstance(value, int) or float(value).is_integer() and decimals == 0:
        return f"{int(value):,}"
    text = f"{float(value):,.{decimals}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def porcentaje(value, decimals: int = 2) -> str:
    """10.5 -> '10.5 %'; None -> 's/d'."""
    return SIN_DATO if value is None else f"{numero(value, decimals)} %"


def cantidad(value, singular: str, plural: str | None = None) -> str:
    """'1 registro', '1,000 registros'."""
    return f"{numero(value)} {singular if value == 1 else (plural or singular + 's')}"


def fecha_larga(value) -> str:
    """A date (or the local date of a moment) in words: '1 de diciembre de 2026'."""
    if value is None or value == "":
        return SIN_DATO
    if isinstance(value, str):
        value = to_datetime(value) if len(value) > 10 else dt.date.fromisoformat(value)
    if isinstance(value, dt.datetime):
        value = to_datetime(value).date()
    return f"{value.day} de {MESES[value.month - 1]} de {value.year}"


def fecha_hora(value) -> str:
    """A stored instant at the procedure's local time, in words: '1 de diciembre de 2026, 14:05'."""
    if value is None or value == "":
        return SIN_DATO
    local = to_datetime(value)
    return f"{fecha_larga(local.date())}, {local:%H:%M}"


def fecha_corta(value) -> str:
    """'1/dic/2026 14:05' for a chart axis or a dense table (local time)."""
    if value is None or value == "":
        return SIN_DATO
    local = to_datetime(value)
    return f"{local.day}/{MESES[local.month - 1][:3]} {local:%H:%M}"


def horas(value) -> str:
    """Business hours: '3.5 h hábiles'."""
    return SIN_DATO if value is None else f"{numero(value)} h hábiles"


def duracion(delta: dt.timedelta | None) -> str:
    """A calendar age: '3 días 4 h', '5 h 20 min', '12 min'."""
    if delta is None:
        return SIN_DATO
    minutes = max(0, int(delta.total_seconds() // 60))
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    if days:
        return f"{cantidad(days, 'día')} {hours} h"
    return f"{hours} h {mins} min" if hours else f"{mins} min"
