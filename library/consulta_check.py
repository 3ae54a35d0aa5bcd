#!/usr/bin/python
# Copyright: (c) 2026, DGTIC Operaciones
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

DOCUMENTATION = r"""
---
module: consulta_check
short_description: One real consultation to a registry provider (by CURP or by RFC) through an endpoint
description:
  - Sends one consultation through a host's consultation gateway (plain HTTP to the host's nginx, which calls the
    provider over verified TLS) or straight to the provider over HTTPS, and checks the answer.
  - The provider's C(consultation) in the registry decides the request. Strategy V(curp_soap) (RENAPO's) is SOAP 1.1
    C(consultarPorCurp) at C(<base_path>/WebServicesConsulta/services/ConsultaPorCurpService) by I(curp); strategy
    V(rfc_opinion) (SAT's) is C(GET <base_path>/sat/opinion/<RFC>) by I(rfc). C(base_path) is the provider's path
    prefix on the gateway (default none), for example C(/ine).
  - Fails with a message naming the cause, also in C(failure), one of C(invalid_input) (malformed CURP or RFC,
    rejected before sending), C(tls_verify) (TLS verification failure), C(tls) (handshake refused, for example no
    client certificate), C(refused) (endpoint down), C(unreachable), C(timeout), C(gateway) (HTTP 502/504 from the
    gateway, which could not verify or reach the provider), C(http_status), C(soap_fault), C(bad_response),
    C(no_exitoso) (a curp_soap C(NO EXITOSO) with its TipoError/CodigoError) or C(unexpected) (an answer other than
    I(expect)).
  - It only reads, so it runs in check mode too, and never reports a change. The password is never echoed.
extends_documentation_fragment: [providers, attributes.info]
version_added: "0.1.0"
author: DGTIC Operaciones (@dgtic-operaciones)
options:
  provider:
    description:
      - Which provider of the registry (I(providers)) to consult; its consultation strategy and base path shape the
        request.
    type: str
    required: true
    aliases: [service]
  endpoint:
    description:
      - Base URL, for example C(http://127.0.0.2:8080) (a host's gateway) or C(https://127.0.0.1:9443) (the
        provider directly). The module appends the service path.
    type: str
    required: true
  curp:
    description:
      - CURP to consult, required when the provider's strategy is V(curp_soap). Its structure and check digit are
        checked before sending.
    type: str
  rfc:
    description: RFC to consult, required when the provider's strategy is V(rfc_opinion).
    type: str
  usuario:
    description: Web-service user of a V(curp_soap) provider (sent in the SOAP body).
    type: str
    default: ""
  password:
    description: Web-service password of a V(curp_soap) provider (sent in the SOAP body). Never logged or returned.
    type: str
    default: ""
  ca_path:
    description:
      - PEM file of the anchors to trust when I(endpoint) is HTTPS. Default is the system trust store.
    type: path
  client_cert:
    description: PEM client certificate (chain) to present over HTTPS (the V(rfc_opinion) mutual TLS).
    type: path
  client_key:
    description: PEM private key of I(client_cert).
    type: path
  timeout:
    description: Seconds before the consultation is given up.
    type: float
    default: 10
  expect:
    description:
      - The answer that counts as success. V(curp_soap) C(EXITOSO) (default) or C(NO EXITOSO) (to check a
        not-found answer); V(rfc_opinion) an opinion (C(POSITIVA), C(NEGATIVA), C(INSCRITO SIN OBLIGACIONES),
        C(NO INSCRITO)) or C(any) (default).
    type: str
notes:
  - Runs with the Python standard library only, on the controller or on any host.
"""

EXAMPLES = r"""
- name: Consult RENAPO through the host's gateway
  consulta_check:
    provider: renapo
    providers: "{{ procedure_providers }}"
    endpoint: "{{ consulta_gateway_url }}"
    curp: "{{ consulta_verify_curp }}"
    usuario: "{{ consulta_verify_usuario }}"
    password: "{{ consulta_verify_password }}"
  delegate_to: localhost
  register: consulta

- name: The host reached RENAPO and the CURP is active
  ansible.builtin.assert:
    that:
      - consulta.status_oper == 'EXITOSO'
      - consulta.status_curp in ['AN', 'AH', 'RCC', 'RCN', 'CRA']

- name: Consult RENAPO directly, trusting only the lab anchor
  consulta_check:
    provider: renapo
    providers: "{{ procedure_providers }}"
    endpoint: https://127.0.0.1:9443
    curp: "{{ consulta_verify_curp }}"
    usuario: "{{ consulta_verify_usuario }}"
    password: "{{ consulta_verify_password }}"
    ca_path: /etc/consulta/trust/renapo-bundle.pem
  register: direct

- name: RENAPO presented the expected certificate
  ansible.builtin.assert:
    that: direct.peer_serial == expected_serial

- name: A CURP RENAPO does not know is answered NO EXITOSO 01/06
  consulta_check:
    provider: renapo
    providers: "{{ procedure_providers }}"
    endpoint: "{{ consulta_gateway_url }}"
    curp: MARY460713MSLRSL09
    usuario: "{{ consulta_verify_usuario }}"
    password: "{{ consulta_verify_password }}"
    expect: NO EXITOSO
  register: unknown

- name: Check the codes
  ansible.builtin.assert:
    that: unknown.tipo_error == '01' and unknown.codigo_error == '06'

- name: SAT opinion with the host's client identity (mutual TLS)
  consulta_check:
    provider: sat
    providers: "{{ procedure_providers }}"
    endpoint: https://127.0.0.1:9444
    rfc: "{{ consulta_verify_rfc }}"
    ca_path: /etc/consulta/trust/sat-ca.pem
    client_cert: /etc/consulta/identity/sat/cert.pem
    client_key: /etc/consulta/identity/sat/key.pem
    expect: POSITIVA
  register: sat

- name: SAT saw the identity that was just deployed
  ansible.builtin.assert:
    that: sat.client_serial == deployed_serial

- name: A third provider defined in inventory only (strategy curp_soap, base_path /ine) through the same gateway
  consulta_check:
    provider: ine
    providers: "{{ procedure_providers }}"
    endpoint: "{{ consulta_gateway_url }}"
    curp: "{{ consulta_verify_curp }}"
    usuario: "{{ consulta_verify_usuario }}"
    password: "{{ consulta_verify_password }}"
  register: ine

- name: The gateway reached INE under /ine
  ansible.builtin.assert:
    that: ine.endpoint.endswith('/ine/WebServicesConsulta/services/ConsultaPorCurpService')
"""

RETURN = r"""
provider:
  description: The provider consulted (its name in the registry).
  returned: always
  type: str
  sample: renapo
strategy:
  description: The provider's consultation strategy, V(curp_soap) or V(rfc_opinion).
  returned: always
  type: str
  sample: curp_soap
endpoint:
  description: The full URL consulted.
  returned: always
  type: str
  sample: http://127.0.0.2:8080/WebServicesConsulta/services/ConsultaPorCurpService
http_status:
  description: HTTP status of the answer.
  returned: when an answer arrived
  type: int
  sample: 200
latency_ms:
  description: Milliseconds from connecting to the whole answer read.
  returned: when an answer arrived
  type: float
  sample: 4.21
peer_serial:
  description:
    - Serial of the certificate the endpoint presented, when the module itself spoke TLS, in openssl's
      C(x509 -serial) form (upper-case hex, an even number of digits).
  returned: when an answer arrived
  type: str
  sample: 4F1A0C2B9D
status_oper:
  description: The CURPStruct's statusOper (C(EXITOSO) or C(NO EXITOSO)); null for the rfc_opinion strategy.
  returned: the service answered
  type: str
  sample: EXITOSO
status_curp:
  description:
    - statusCurp of the record (active AN, AH, RCC, RCN, CRA; inactive BAP, BSU, BD, BDM, BDP, BJD...); null for
      the rfc_opinion strategy.
  returned: the service answered
  type: str
  sample: AN
message:
  description:
    - The CURPStruct's message attribute (null for the rfc_opinion strategy), or a SOAP fault's faultstring.
  returned: the service answered
  type: str
  sample: LA OPERACION SE EJECUTO.
tipo_error:
  description: The CURPStruct's TipoError (empty on success; null for the rfc_opinion strategy).
  returned: the service answered
  type: str
  sample: "01"
codigo_error:
  description: The CURPStruct's CodigoError (empty on success; 06 = CURP not found; null for the rfc_opinion strategy).
  returned: the service answered
  type: str
  sample: "06"
fault_code:
  description: The faultcode of a SOAP fault the service answered with.
  returned: failed with C(failure=soap_fault)
  type: str
  sample: soapenv:Server
session_id:
  description: The CURPStruct's SessionID.
  returned: the strategy is curp_soap and the service answered
  type: str
  sample: 3f05aacbb4b14b70820a1f52fa36d899
record:
  description: The CURPStruct fields (CURP, apellido1, apellido2, nombres, sexo, fechNac, statusCurp...); empty for
    the rfc_opinion strategy.
  returned: the service answered
  type: dict
  sample: {"CURP": "PEAL770525MBSRVT05", "nombres": "LETICIA", "fechNac": "25/05/1977", "statusCurp": "AN"}
opinion:
  description: The opinión de cumplimiento; null for the curp_soap strategy.
  returned: the service answered
  type: str
  sample: POSITIVA
sat_folio:
  description: Folio of the opinion.
  returned: the strategy is rfc_opinion and the service answered
  type: str
  sample: 26NA00000001
sat_fecha:
  description: Date of the opinion, as the service gives it.
  returned: the strategy is rfc_opinion and the service answered
  type: str
  sample: "2026-01-15T10:15:00-06:00"
client_serial:
  description: Serial (upper-case hex) of the client certificate the service saw, that is the identity presented.
  returned: the strategy is rfc_opinion and the service answered
  type: str
  sample: 0BAD16A756CD51A47BE3
failure:
  description: On failure, the kind of cause (see the description).
  returned: failed
  type: str
  sample: tls_verify
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.consulta import SUBJECTS, ConsultaError, consult
from ansible.module_utils.providers import ProviderError, registry


def main():
    module = AnsibleModule(
        argument_spec=dict(
            provider=dict(type="str", required=True, aliases=["service"]),
            providers=dict(type="dict", required=True),
            endpoint=dict(type="str", required=True),
            curp=dict(type="str"),
            rfc=dict(type="str"),
            usuario=dict(type="str", default=""),
            password=dict(type="str", default="", no_log=True),
            ca_path=dict(type="path"),
            client_cert=dict(type="path"),
            client_key=dict(type="path", no_log=False),
            timeout=dict(type="float", default=10),
            expect=dict(type="str"),
        ),
        required_together=[("client_cert", "client_key")],
        supports_check_mode=True,
    )
    p = module.params
    try:
        known = registry(p["providers"])
    except ProviderError as e:
        module.fail_json(msg=f"provider registry (providers): {e}")
    if p["provider"] not in known.names():
        module.fail_json(msg=f"unknown provider {p['provider']!r}; the provider registry (procedure_providers) has "
                             f"{', '.join(known.names())}")
    provider = known.get(p["provider"])
    strategy = provider.consultation["strategy"]
    subject = SUBJECTS[strategy]  # the subject follows the strategy: a CURP for curp_soap, an RFC for rfc_opinion
    if not p[subject]:
        module.fail_json(msg=f"{provider.display_name} is consulted by {subject.upper()} (strategy {strategy}): "
                             f"give {subject}", failure="invalid_input")
    named = {"provider": provider.name, "strategy": strategy}
    error = None  # set by the except below; exit_json ends the else
    try:
        result = consult(strategy, p["endpoint"], curp=p["curp"], rfc=p["rfc"], usuario=p["usuario"],
                         password=p["password"], ca_path=p["ca_path"], client_cert=p["client_cert"],
                         client_key=p["client_key"], timeout=p["timeout"], expect=p["expect"],
                         base_path=provider.consultation.get("base_path", ""), name=provider.display_name)
    except ConsultaError as e:
        error = e
    else:
        module.exit_json(changed=False, **named, **result)
    # Outside the except block: the cause is named in msg, a Python traceback would only add noise.
    module.fail_json(msg=str(error), failure=error.kind, **named, **error.result)


if __name__ == "__main__":
    main()
