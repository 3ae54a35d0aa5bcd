#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: padron_consulta
short_description: Consult every CURP of a padrón at RENAPO, or every RFC at SAT, and store the results (resumable)
description:
  - Reads a padrón CSV file and consults each CURP with RENAPO's C(consultarPorCurp), through a host's
    consultation gateway or RENAPO directly, with bounded concurrency, and stores each result in a SQLite database
    or a PostgreSQL database (the store AWX job slices share), with the moment of the consultation.
  - "Padrón columns (UTF-8 CSV with a header row; extra columns are ignored): C(curp), C(nombres), C(apellido1),
    C(apellido2), C(fecha_nacimiento) (YYYY-MM-DD or DD/MM/YYYY), C(sexo) (H/M), C(entidad) (two-letter CURP state
    code)."
  - A malformed CURP (structure or check digit) or a CURP repeated in the padrón is stored as an inconsistency
    without calling RENAPO. An empty file, a file that is not UTF-8 or a missing column fails naming the defect.
  - Retries with exponential backoff on HTTP 5xx, timeouts and connection errors. Wrong credentials or a TLS trust
    failure stop the batch at once.
  - Checkpoint; results are committed as they arrive. A run killed half-way is resumed by the next invocation over
    the same padrón file, which consults only the records without a committed result.
  - A padrón C(entidad) that is not a CURP state code (a name, a typo, a spreadsheet formula) is refused; the CURP's
    state is used and the rows are returned in RV(invalid_entidad_rows).
  - RENAPO's answer declares UTF-8 and carries accents and Ñ as ISO-8859-1 bytes; the client decodes them right and
    stores RENAPO's names as received. RENAPO's 01/09 (invalid CURP) is a definitive answer, never retried.
  - Which provider is consulted comes from the provider registry (O(providers)), by its consultation strategy
    C(curp_soap) (the padrón's CURPs) or C(rfc_opinion) (a CSV of RFCs, column C(rfc), optional C(curp); each RFC's
    opinión de cumplimiento, with mutual TLS through O(client_cert)/O(client_key) when the endpoint is the provider
    itself), through the same batch machinery, into the same database. Each run records its provider.
  - A provider's C(consultation.base_path) in the registry is appended to O(endpoint) (its location on a gateway).
  - "AWX job slicing: with O(slice)/O(slices) (for example from C(awx_job_slice_number)/C(awx_job_slice_count))
    a job consults only the records whose CURP (or RFC) hashes to its slice: a stable partition, no record in two
    slices and none left out. Every slice writes into the same run of a shared O(results_db) (PostgreSQL across
    execution nodes); the run is finished when its last slice finishes, and its KPIs are those of an unsliced run."
  - O(rate_limit) caps the requests per second sent to the endpoint (every attempt counted), shared by every
    process and slice using the same O(results_db) and endpoint.
  - In check mode the padrón is read and checked and the module reports what it would consult; nothing is sent.
extends_documentation_fragment: [providers, attributes]
version_added: "0.1.0"
author: DGTIC Operaciones (@dgtic-operaciones)
options:
  provider:
    description:
      - The registry provider to consult; its consultation strategy decides the file (CURPs or RFCs).
      - Without it, the registry's first provider whose strategy is O(strategy).
    type: str
    aliases: [service]
  strategy:
    description:
      - C(curp_soap) consults the padrón's CURPs; C(rfc_opinion) the opinión de cumplimiento of an RFC file.
      - With O(provider) it must be the provider's own strategy; without either, C(curp_soap).
    type: str
    choices: [curp_soap, rfc_opinion]
  padron:
    description: Path of the padrón CSV file (strategy C(curp_soap)) or of the RFC CSV file (C(rfc_opinion)).
    type: path
    required: true
  results_db:
    description:
      - The results store. A SQLite file (a path or C(sqlite:///path); created with its directory when missing), or
        a PostgreSQL database C(postgresql://user@host:5432/db) (psycopg 3 on the controller), which job slices on
        several execution nodes share. A password in the URL is never returned or logged; prefer C(PGPASSWORD).
    type: str
    required: true
  endpoint:
    description:
      - Base URL of the consultation, for example C(http://127.0.0.2:8080) (a host's gateway) or
        C(https://127.0.0.1:9443) (RENAPO directly). The service path is appended.
    type: str
    required: true
  usuario:
    description: User of the consultation (required with strategy C(curp_soap)).
    type: str
  password:
    description: Password of the consultation; never returned or logged (required with strategy C(curp_soap)).
    type: str
  ca_path:
    description: PEM bundle that verifies an HTTPS endpoint (RENAPO's anchor, or SAT's CA).
    type: path
  client_cert:
    description: PEM client certificate presented to SAT (mutual TLS), when the endpoint is SAT itself.
    type: path
  client_key:
    description: PEM private key of O(client_cert).
    type: path
  concurrency:
    description: Consultations in flight at once.
    type: int
    default: 8
  retries:
    description: Extra attempts for a consultation that failed with 5xx, a timeout or a connection error.
    type: int
    default: 3
  backoff:
    description: Seconds before the first retry; each further retry waits twice as long.
    type: float
    default: 0.5
  timeout:
    description: Seconds to wait for each answer.
    type: float
    default: 10
  run_id:
    description:
      - Run to create or continue. Without it the unfinished run of the same padrón file is resumed, or a new run
        named after the current time is started. Naming a finished run retries its records that ended in error.
    type: str
  resume:
    description:
      - Resume the unfinished run of the same padrón file when I(run_id) is not given.
      - With O(slices) above 1 it must stay on (or I(run_id) be given), so that every slice joins the same run.
    type: bool
    default: true
  slice:
    description: This job's slice, from 1 to O(slices) (AWX C(awx_job_slice_number)).
    type: int
    default: 1
  slices:
    description: Number of slices the padrón is split into (AWX C(awx_job_slice_count)); 1 consults it all.
    type: int
    default: 1
  rate_limit:
    description:
      - Most requests per second sent to the endpoint, over every slice and process sharing O(results_db); retries
        count. Unset means no limit (only O(concurrency) bounds the load).
    type: float
"""

EXAMPLES = r"""
- name: Consult the padrón through the first host's gateway
  padron_consulta:
    strategy: curp_soap
    providers: "{{ procedure_providers }}"
    padron: /srv/padron/padron.csv
    results_db: /var/lib/consulta/padron_resultados.db
    endpoint: http://127.0.0.2:8080
    usuario: "{{ padron_consulta_usuario }}"
    password: "{{ padron_consulta_password }}"
    concurrency: 8
  register: corrida

- name: One AWX job slice of the padrón, into the store the slices share, at most 50 requests per second in all
  padron_consulta:
    providers: "{{ procedure_providers }}"
    padron: /srv/padron/padron.csv
    results_db: postgresql://padron@db.example:5432/consulta
    endpoint: http://127.0.0.2:8080
    usuario: "{{ padron_consulta_usuario }}"
    password: "{{ padron_consulta_password }}"
    slice: "{{ awx_job_slice_number | default(1) }}"
    slices: "{{ awx_job_slice_count | default(1) }}"
    rate_limit: 50

- name: Every record has a result
  ansible.builtin.assert:
    that:
      - corrida.stored == corrida.padron_total
      - corrida.error == 0

- name: The opinión de cumplimiento of the padrón's RFCs through the same gateway
  padron_consulta:
    strategy: rfc_opinion
    providers: "{{ procedure_providers }}"
    padron: /srv/padron/rfc.csv
    results_db: /var/lib/consulta/padron_resultados.db
    endpoint: http://127.0.0.2:8080
  register: corrida_rfc

- name: Every RFC has an opinion
  ansible.builtin.assert:
    that:
      - corrida_rfc.answered + corrida_rfc.malformed + corrida_rfc.duplicate == corrida_rfc.padron_total
"""

RETURN = r"""
provider:
  description: The registry provider consulted (recorded with the run).
  returned: success
  type: str
  sample: renapo
strategy:
  description: Its consultation strategy, which decided the batch (C(curp_soap) or C(rfc_opinion)).
  returned: success
  type: str
  sample: curp_soap
run_id:
  description: The run the results belong to.
  returned: always
  type: str
  sample: 20261128T092105
resumed:
  description: Whether an earlier, unfinished run was continued.
  returned: always
  type: bool
  sample: false
started_at:
  description: When the run started (ISO 8601, UTC).
  returned: success
  type: str
  sample: "2026-11-28T09:21:05+00:00"
finished_at:
  description: When the run's last slice finished (ISO 8601, UTC); null while other slices are still running.
  returned: success
  type: str
  sample: "2026-11-28T09:40:12+00:00"
padron:
  description: The padrón file the run consults (its path when the run started).
  returned: success
  type: str
  sample: /srv/padron/padron_2026.csv
endpoint:
  description: The endpoint the run consults.
  returned: success
  type: str
  sample: http://127.0.0.2:8080
consulted:
  description: Consultations sent to RENAPO by this invocation.
  returned: always
  type: int
  sample: 990
would_consult:
  description: In check mode, the consultations a real run would send.
  returned: check mode
  type: int
  sample: 990
already_stored:
  description: Records that already had a committed result in the run and were not consulted again.
  returned: always
  type: int
  sample: 0
padron_total:
  description: Records in the padrón file.
  returned: always
  type: int
  sample: 1000
stored:
  description: Records of the run with a stored result.
  returned: success
  type: int
  sample: 1000
found:
  description: Records RENAPO answered EXITOSO.
  returned: success
  type: int
  sample: 940
not_found:
  description: Records whose CURP RENAPO does not know (NO EXITOSO 01/06).
  returned: success
  type: int
  sample: 50
malformed:
  description: Records with a malformed CURP (never sent, or refused by RENAPO as malformed).
  returned: success
  type: int
  sample: 10
duplicate:
  description: Records whose CURP already appears in an earlier record of the padrón.
  returned: success
  type: int
  sample: 0
error:
  description: Records without an answer after every retry (retried when the run is resumed).
  returned: success
  type: int
  sample: 0
bajas:
  description: Records with an inactive statusCurp.
  returned: success
  type: int
  sample: 70
deceased:
  description: Records with statusCurp BD.
  returned: success
  type: int
  sample: 45
mismatched:
  description: Found records whose name, birth date or sex disagree with the padrón.
  returned: success
  type: int
  sample: 45
answered:
  description: With strategy C(rfc_opinion), RFCs the provider answered with an opinion.
  returned: success with strategy rfc_opinion
  type: int
  sample: 900
opinions:
  description: With strategy C(rfc_opinion), RFCs per opinion.
  returned: success with strategy rfc_opinion
  type: dict
  sample: {"POSITIVA": 700, "NEGATIVA": 120, "INSCRITO SIN OBLIGACIONES": 60, "NO INSCRITO": 20}
invalid_entidad:
  description: Padrón rows whose entidad is not a CURP state code (the CURP's state was used).
  returned: success with strategy curp_soap
  type: int
  sample: 2
invalid_entidad_rows:
  description: Up to 20 padrón line numbers with an invalid entidad (the values are not echoed).
  returned: success with strategy curp_soap
  type: list
  elements: int
  sample: [17, 402]
duplicated_curps:
  description: Number of CURPs (or RFCs) listed more than once in the file.
  returned: always
  type: int
  sample: 0
duplicates:
  description: Up to 20 duplicated CURPs with the padrón lines where each appears.
  returned: always
  type: dict
  sample: {"PEAL770525MBSRVT05": [2, 17]}
slice:
  description: This job's slice.
  returned: always
  type: int
  sample: 1
slices:
  description: Number of slices of the run.
  returned: always
  type: int
  sample: 2
slice_records:
  description: Records of the file in this slice (all of them when unsliced).
  returned: success
  type: int
  sample: 10042
results_db:
  description: The results store (a PostgreSQL URL with its password masked).
  returned: always
  type: str
  sample: /var/lib/consulta/padron_resultados.db
"""

import os

from ansible.module_utils.basic import AnsibleModule, missing_required_lib
from ansible.module_utils.padron_batch import (
    CURP_SOAP,
    PadronError,
    consulted_provider,
    plan,
    read_padron,
    read_rfcs,
    run_batch,
    run_rfc_batch,
)
from ansible.module_utils.sla import HOLIDAYS_IMPORT_ERROR
from ansible.module_utils.ticket_store import POSTGRES_SCHEMES, dsn_secrets, redact
from ansible.module_utils.x509_load import CRYPTOGRAPHY_IMPORT_ERROR


def main():
    module = AnsibleModule(
        argument_spec=dict(
            provider=dict(type="str", aliases=["service"]),
            strategy=dict(type="str", choices=["curp_soap", "rfc_opinion"]),
            providers=dict(type="dict", required=True),
            padron=dict(type="path", required=True),
            results_db=dict(type="str", required=True),
            endpoint=dict(type="str", required=True),
            usuario=dict(type="str"),
            password=dict(type="str", no_log=True),
            ca_path=dict(type="path"),
            client_cert=dict(type="path"),
            client_key=dict(type="path", no_log=False),
            concurrency=dict(type="int", default=8),
            retries=dict(type="int", default=3),
            backoff=dict(type="float", default=0.5),
            timeout=dict(type="float", default=10),
            run_id=dict(type="str"),
            resume=dict(type="bool", default=True),
            slice=dict(type="int", default=1),
            slices=dict(type="int", default=1),
            rate_limit=dict(type="float"),
        ),
        required_together=[("client_cert", "client_key")],
        supports_check_mode=True,
    )
    for lib, error in (("cryptography", CRYPTOGRAPHY_IMPORT_ERROR), ("holidays", HOLIDAYS_IMPORT_ERROR)):
        if error:
            module.fail_json(msg=missing_required_lib(lib), exception=error)
    p = module.params
    try:
        provider = consulted_provider(p["providers"], p["provider"], p["strategy"])
    except PadronError as e:
        module.fail_json(msg=str(e))
    strategy = provider.consultation["strategy"]
    curps = strategy == CURP_SOAP
    if curps and not (p["usuario"] and p["password"]):
        module.fail_json(msg=f"consulting the padrón's CURPs at {provider.display_name} (strategy {strategy}) needs "
                             "usuario and password")
    endpoint = p["endpoint"]
    dsn = p["results_db"]
    module.no_log_values.update(dsn_secrets(dsn))
    shown = redact(dsn)
    if not dsn.startswith(POSTGRES_SCHEMES):
        dsn = os.path.expanduser(dsn[len("sqlite:///"):] if dsn.startswith("sqlite:///") else dsn)
    sliced = {"slice_no": p["slice"], "slices": p["slices"]}
    try:
        if module.check_mode:
            padron = read_padron(p["padron"]) if curps else read_rfcs(p["padron"])
            would = plan(dsn, padron, p["run_id"], p["resume"], strategy, provider=provider.name, **sliced)
            module.exit_json(changed=would["to_consult"] + would["prechecked"] > 0, run_id=would["run_id"],
                             provider=provider.name, strategy=strategy,
                             resumed=would["resumed"], consulted=0, would_consult=would["to_consult"],
                             already_stored=would["already_done"], padron_total=len(padron["records"]),
                             duplicated_curps=len(padron["duplicates"]),
                             duplicates=dict(list(padron["duplicates"].items())[:20]), results_db=shown,
                             slice=p["slice"], slices=p["slices"])
        if not dsn.startswith(POSTGRES_SCHEMES):
            os.makedirs(os.path.dirname(os.path.abspath(dsn)), exist_ok=True)
        common = {"ca_path": p["ca_path"], "timeout": p["timeout"], "concurrency": p["concurrency"],
                  "retries": p["retries"], "backoff": p["backoff"], "run_id": p["run_id"], "resume": p["resume"],
                  "rate_limit": p["rate_limit"], "provider": provider.name, "name": provider.display_name,
                  # A provider published under a path of the gateway (consultation.base_path in the registry).
                  "base_path": provider.consultation.get("base_path") or "", **sliced}
        if curps:
            result = run_batch(p["padron"], dsn, endpoint, usuario=p["usuario"], password=p["password"], **common)
        else:
            result = run_rfc_batch(p["padron"], dsn, endpoint, client_cert=p["client_cert"],
                                   client_key=p["client_key"], **common)
    except PadronError as e:
        module.fail_json(msg=str(e), results_db=shown)
    module.exit_json(changed=result["stored"] > result["already_stored"], results_db=shown, **result)


if __name__ == "__main__":
    main()
