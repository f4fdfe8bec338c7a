{{/*
Names, labels and shared fragments of the shoal-operator chart.
*/}}

{{/* The chart name, or nameOverride. */}}
{{- define "shoal-operator.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
The prefix of every object name: fullnameOverride, else RELEASE-NAME, or
RELEASE alone when it already contains the chart name.
*/}}
{{- define "shoal-operator.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "shoal-operator.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels that select the operator pod; never change them after install. */}}
{{- define "shoal-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shoal-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end }}

{{/* Labels of every object of the chart. */}}
{{- define "shoal-operator.labels" -}}
helm.sh/chart: {{ include "shoal-operator.chart" . }}
{{ include "shoal-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: shoal
{{- end }}

{{/* The ServiceAccount's name. */}}
{{- define "shoal-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "shoal-operator.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The operator image reference. */}}
{{- define "shoal-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* The namespace served in single-namespace mode. */}}
{{- define "shoal-operator.watchNamespace" -}}
{{- default .Release.Namespace .Values.rbac.watchNamespace }}
{{- end }}

{{/*
RBAC rules on namespaced resources, shared by the ClusterRole and the Role:
the shoal resources, the children the operator creates (scheduler Deployment
and Service, worker and runner pods, credential Secrets, the NetworkPolicy),
scheduler logs, and kopf's events.
*/}}
{{- define "shoal-operator.namespacedRules" -}}
- apiGroups: [shoal.dev]
  resources: [shoalclusters, shoaljobs]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [shoal.dev]
  resources: [shoalclusters/status, shoaljobs/status, shoalclusters/scale]
  verbs: [get, update, patch]
- apiGroups: [apps]
  resources: [deployments]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [pods, services]
  verbs: [get, list, watch, create, update, patch, delete]
- apiGroups: [""]
  resources: [pods/log]
  verbs: [get]
- apiGroups: ["", events.k8s.io]
  resources: [events]
  verbs: [create, patch]
# Each ShoalCluster's CA, certificates and HTTP token (made, checked, rotated;
# deleted with the cluster by the garbage collector), and its NetworkPolicy.
- apiGroups: [""]
  resources: [secrets]
  verbs: [get, list, create, patch]
- apiGroups: [networking.k8s.io]
  resources: [networkpolicies]
  verbs: [get, create, patch, delete]
{{- end }}
