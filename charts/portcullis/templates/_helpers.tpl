{{/* The release's object names: the release name, with the chart's name added unless it has it. */}}
{{- define "portcullis.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "portcullis.selectorLabels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: gateway
{{- end -}}

{{- define "portcullis.labels" -}}
app.kubernetes.io/name: {{ .Chart.Name }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end -}}

{{- define "portcullis.image" -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}
{{- end -}}

{{/*
Reads and status writes on namespaced objects: in a ClusterRole when every namespace is watched,
in a Role per namespace otherwise. tests/manifests.rs holds the rendered rules to its table.
*/}}
{{- define "portcullis.namespacedRules" -}}
# `get` only where status is written: a write refused as a conflict reads the object again.
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways, httproutes, grpcroutes, tlsroutes, backendtlspolicies]
  verbs: [get, list, watch]
- apiGroups: [gateway.networking.k8s.io]
  resources: [referencegrants]
  verbs: [list, watch]
- apiGroups: [gateway.networking.k8s.io]
  resources: [gateways/status, httproutes/status, grpcroutes/status, tlsroutes/status, backendtlspolicies/status]
  verbs: [patch]
# ConfigMaps hold the CA bundles that BackendTLSPolicies name.
- apiGroups: [""]
  resources: [services, secrets, configmaps]
  verbs: [list, watch]
- apiGroups: [discovery.k8s.io]
  resources: [endpointslices]
  verbs: [list, watch]
{{ include "portcullis.eventRules" . }}
{{- end -}}

{{/* Recording Events. */}}
{{- define "portcullis.eventRules" -}}
- apiGroups: [events.k8s.io]
  resources: [events]
  verbs: [create, patch]
{{- end -}}

{{/*
The gateway workloads, as YAML under `workloads:` (read back with fromYaml). With `gateways`
empty, one workload serves every Gateway of the class. Otherwise each listed Gateway gets a
workload of its own, run with `--gateway NS/NAME`: its own pods, Service, PodDisruptionBudget
and leader-election Lease, so that Gateways do not share failures, load or rollouts. A shared
workload beside them would serve the listed Gateways a second time, so there is none.

Each workload has a name (its objects' names, a DNS label: long or dotted names are cut and
given a hash of the whole, so that two Gateways never share one), the Lease it elects through,
its replicas and Service settings, and for a listed Gateway its `NS/NAME`. The Lease of a listed
Gateway is the one the binary defaults to under `--gateway`: `portcullis.NS.NAME`.
*/}}
{{- define "portcullis.workloads" -}}
{{- $fullname := include "portcullis.fullname" . -}}
workloads:
{{- if not .Values.gateways }}
  - name: {{ $fullname }}
    lease: {{ $fullname }}
    replicas: {{ .Values.replicas }}
    service: {{ toJson .Values.service }}
{{- end }}
{{- $seen := dict -}}
{{- range $index, $gateway := .Values.gateways }}
{{- $reference := printf "%s/%s" $gateway.namespace $gateway.name -}}
{{- if hasKey $seen $reference -}}
{{- fail (printf "gateways[%d]: %s is listed twice; list each Gateway once" $index $reference) -}}
{{- end -}}
{{- $_ := set $seen $reference true -}}
{{- if and $.Values.watchNamespaces (not (has $gateway.namespace $.Values.watchNamespaces)) -}}
{{- fail (printf "gateways[%d]: namespace %s is not among watchNamespaces, so its workload would never see the Gateway; add it there" $index $gateway.namespace) -}}
{{- end -}}
{{- $name := printf "%s-%s-%s" $fullname $gateway.namespace $gateway.name -}}
{{- if or (gt (len $name) 63) (contains "." $name) -}}
{{- $name = printf "%s-%s" ($name | replace "." "-" | trunc 54 | trimSuffix "-") ($name | sha256sum | trunc 8) -}}
{{- end }}
  - name: {{ $name }}
    gateway: {{ $reference }}
    lease: {{ printf "portcullis.%s.%s" $gateway.namespace $gateway.name }}
    replicas: {{ $gateway.replicas | default $.Values.replicas }}
    service: {{ merge (deepCopy ($gateway.service | default dict)) (deepCopy $.Values.service) | toJson }}
{{- end }}
{{- end -}}

{{/* The labels that pick one workload's pods: the release's, and for a listed Gateway its own. */}}
{{- define "portcullis.workloadSelectorLabels" -}}
{{ include "portcullis.selectorLabels" .root }}
{{- with .workload.gateway }}
portcullis.dev/gateway: {{ $.workload.name }}
{{- end }}
{{- end -}}
