#!/usr/bin/python

DOCUMENTATION = r"""
---
module: consulta_check
short_description: One real consultation to RENAPO (CURP) or SAT (opinión de cumplimiento) through an endpoint
description:
  - Sends one consultation through a host's consultation gateway (plain HTTP to the host's nginx, which calls the
    provider over verified TLS) or straight to the provider over HTTPS, and checks the answer.
  - RENAPO is called with SOAP 1.1 C(consultarPorCurp) at C(/WebServicesConsulta/services/ConsultaPorCurpService);
    SAT with C(GET /sat/opinion/<RFC>).
  - Fails with a message naming the cause, also in C(failure), one of C(invalid_input) (malformed CURP or RFC,
    rejected before sending), C(tls_verify) (TLS verification failure), C(tls) (handshake refused, for example no
    client certificate), C(refused) (endpoint down), C(unreachable), C(timeout), C(gateway) (HTTP 502/504 from the
    gateway, which could not verify or reach the provider), C(http_status), C(soap_fault), C(bad_response),
    C(no_exitoso) (RENAPO's C(NO EXITOSO) with its TipoError/CodigoError) or C(unexpected) (an answer other than
    I(expect)).
  - It only reads, so it runs in check mode too, and never reports a change. The password is never echoed.
version_added: "0.1.0"
author: DGTIC certificate renewal team
options:
  service:
    description: Which provider to consult.
    type: str
    choices: [renapo, sat]
    default: renapo
  endpoint:
    description:
      - Base URL, for example C(http://127.0.0.2:8080) (a host's gateway) or C(https://127.0.0.1:9443) (the
        provider directly). The module appends the service path.
    type: str
    required: true
  curp:
    description: CURP to consult (I(service=renapo)). Its structure and check digit are checked before sending.
    type: str
  rfc:
    description: RFC to consult (I(service=sat)).
    type: str
  usuario:
    description: RENAPO web-service user (sent in the SOAP body).
    type: str
    default: ""
  password:
    description: RENAPO web-service password (sent in the SOAP body). Never logged or returned.
    type: str
    default: ""
  ca_path:
    description:
      - PEM file of the anchors to trust when I(endpoint) is HTTPS. Default is the system trust store.
    type: path
  client_cert:
    description: PEM client certificate (chain) to present over HTTPS (SAT's mutual TLS).
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
      - The answer that counts as success. RENAPO C(EXITOSO) (default) or C(NO EXITOSO) (to check a not-found
        answer); SAT an opinion (C(POSITIVA), C(NEGATIVA), C(INSCRITO SIN OBLIGACIONES), C(NO INSCRITO)) or
        C(any) (default).
    type: str
notes:
  - Runs with the Python standard library only, on the controller or on any host.
"""

EXAMPLES = r"""
- name: Consult RENAPO through the host's gateway
  consulta_check:
    service: renapo
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
    service: sat
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
"""

RETURN = r"""
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
  description: Serial (upper-case hex) of the certificate the endpoint presented, when the module itself spoke TLS.
  returned: when an answer arrived
  type: str
  sample: 4F1A0C2B9D
status_oper:
  description: RENAPO's statusOper (C(EXITOSO) or C(NO EXITOSO)).
  returned: service is renapo and RENAPO answered
  type: str
  sample: EXITOSO
status_curp:
  description: statusCurp of the record (active AN, AH, RCC, RCN, CRA; inactive BAP, BSU, BD, BDM, BDP, BJD...).
  returned: service is renapo and RENAPO answered
  type: str
  sample: AN
message:
  description: RENAPO's message attribute.
  returned: service is renapo and RENAPO answered
  type: str
  sample: LA OPERACION SE EJECUTO.
tipo_error:
  description: RENAPO's TipoError (empty on success).
  returned: service is renapo and RENAPO answered
  type: str
  sample: "01"
codigo_error:
  description: RENAPO's CodigoError (empty on success; 06 = CURP not found).
  returned: service is renapo and RENAPO answered
  type: str
  sample: "06"
session_id:
  description: RENAPO's SessionID.
  returned: service is renapo and RENAPO answered
  type: str
  sample: 3f05aacbb4b14b70820a1f52fa36d899
record:
  description: The CURPStruct fields (CURP, apellido1, apellido2, nombres, sexo, fechNac, statusCurp...).
  returned: service is renapo and RENAPO answered
  type: dict
  sample: {"CURP": "PEAL770525MBSRVT05", "nombres": "LETICIA", "fechNac": "25/05/1977", "statusCurp": "AN"}
opinion:
  description: SAT's opinión de cumplimiento.
  returned: service is sat and SAT answered
  type: str
  sample: POSITIVA
sat_folio:
  description: Folio of SAT's opinion.
  returned: service is sat and SAT answered
  type: str
  sample: 26NA00000001
client_serial:
  description: Serial (upper-case hex) of the client certificate SAT saw, that is the identity the caller presented.
  returned: service is sat and SAT answered
  type: str
  sample: 0BAD16A756CD51A47BE3
failure:
  description: On failure, the kind of cause (see the description).
  returned: failed
  type: str
  sample: tls_verify
"""

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.consulta import ConsultaError, consult


def main():
    module = AnsibleModule(
        argument_spec=dict(
            service=dict(type="str", default="renapo", choices=["renapo", "sat"]),
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
        required_if=[("service", "renapo", ["curp"]), ("service", "sat", ["rfc"])],
        required_together=[("client_cert", "client_key")],
        supports_check_mode=True,
    )
    p = module.params
    try:
        result = consult(p["service"], p["endpoint"], curp=p["curp"], rfc=p["rfc"], usuario=p["usuario"],
                         password=p["password"], ca_path=p["ca_path"], client_cert=p["client_cert"],
                         client_key=p["client_key"], timeout=p["timeout"], expect=p["expect"])
    except ConsultaError as e:
        error = e
    else:
        module.exit_json(changed=False, **result)
    # Outside the except block: the cause is named in msg, a Python traceback would only add noise.
    module.fail_json(msg=str(error), failure=error.kind, **error.result)


if __name__ == "__main__":
    main()
