{{/* Names, labels and shared pieces of the taskyard chart. */}}

{{/* The chart name, or nameOverride. */}}
{{- define "taskyard.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* The name of the operator's resources: fullnameOverride, else the release name when it contains
the chart name, else <release>-<chart>. */}}
{{- define "taskyard.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/* chart-version, for the helm.sh/chart label. */}}
{{- define "taskyard.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* Labels that select the operator pod. They never change between upgrades. */}}
{{- define "taskyard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "taskyard.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: operator
{{- end -}}

{{/* Standard labels. Call with (dict "root" $ "component" "operator"). */}}
{{- define "taskyard.labels" -}}
helm.sh/chart: {{ include "taskyard.chart" .root }}
app.kubernetes.io/name: {{ include "taskyard.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/component: {{ .component }}
app.kubernetes.io/part-of: taskyard
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
{{- end -}}

{{/* The operator's ServiceAccount. */}}
{{- define "taskyard.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "taskyard.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/* The operator image, with the chart's appVersion as the default tag. */}}
{{- define "taskyard.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{/* Checks values that the schema cannot check alone. Renders nothing. */}}
{{- define "taskyard.validate" -}}
{{- if and (eq .Values.rbac.scope "namespaced") (not .Values.watchNamespaces) -}}
{{- fail "rbac.scope=namespaced needs watchNamespaces: the namespaces to create Roles in and to watch" -}}
{{- end -}}
{{- if eq .Values.rbac.scope "namespaced" -}}
{{- range .Values.watchNamespaces -}}
{{- if regexMatch "[*?\\[\\]!]" . -}}
{{- fail (printf "watchNamespaces: %q is a pattern; with rbac.scope=namespaced every entry must be a namespace name, since a Role is created in each" .) -}}
{{- end -}}
{{- end -}}
{{- end -}}
{{- if and .Values.networkPolicy.enabled (not .Values.admissionPolicies.enabled) -}}
{{- fail "networkPolicy.enabled needs admissionPolicies.enabled: without its policy anyone who may write an Agent could open its egress (spec.egress becomes a NetworkPolicy); set networkPolicy.enabled=false as well, or keep the admission policies" -}}
{{- end -}}
{{- end -}}

{{/* The rules the operator needs on namespaced resources: in a ClusterRole (scope cluster) or in a
Role per watched namespace (scope namespaced). No access to Secrets at all: Task pods read their
Secrets and ConfigMaps themselves, through their env and volumes. */}}
{{- define "taskyard.namespacedRules" -}}
- apiGroups: ["taskyard.dev"]
  resources: ["agents"]
  verbs: ["get", "list", "watch"]
# delete: finished Tasks past their TTL (spec.ttlSecondsAfterFinished or TASKYARD_TASK_TTL_SECONDS).
- apiGroups: ["taskyard.dev"]
  resources: ["tasks"]
  verbs: ["get", "list", "watch", "delete"]
- apiGroups: ["taskyard.dev"]
  resources: ["tasks/status"]
  verbs: ["patch"]
# What a Task owns (Job, claim, log ConfigMap) blocks the Task's deletion until it is gone. Clusters
# with the OwnerReferencesPermissionEnforcement admission plugin (OpenShift, for one) allow that only to
# those who may update the owner's finalizers. Custom resources have no such subresource, so this
# grants no API call.
- apiGroups: ["taskyard.dev"]
  resources: ["tasks/finalizers"]
  verbs: ["update"]
- apiGroups: ["batch"]
  resources: ["jobs"]
  verbs: ["get", "list", "watch", "create", "delete"]
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["pods/log"]
  verbs: ["get"]
- apiGroups: [""]
  resources: ["persistentvolumeclaims"]
  verbs: ["get", "create", "delete"]
# taskyard-agent, the agents' ServiceAccount when their Agent names none: created once per namespace,
# without an API token (the admission policy allows no other create, and no change or delete).
- apiGroups: [""]
  resources: ["serviceaccounts"]
  verbs: ["create"]
{{- if .Values.networkPolicy.enabled }}
# The agents' egress NetworkPolicies: taskyard-agents per namespace, and taskyard-agent-<agent> for an
# Agent with egress rules of its own; created before the first Job there, kept in line with the Agent
# and the settings below (the admission policy allows no other, and no delete).
- apiGroups: ["networking.k8s.io"]
  resources: ["networkpolicies"]
  verbs: ["get", "create", "update"]
{{- end }}
# The log ConfigMap each Task owns (<task>-logs): created, then patched for later attempts. No list or
# watch, and no delete: the garbage collector removes it with its Task.
- apiGroups: [""]
  resources: ["configmaps"]
  verbs: ["get", "create", "patch"]
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/* The rules on cluster-scoped resources, needed in both scopes. */}}
{{- define "taskyard.clusterRules" -}}
- apiGroups: ["taskyard.dev"]
  resources: ["clusteragents"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["scheduling.k8s.io"]
  resources: ["priorityclasses"]
  verbs: ["get", "list", "watch"]
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
{{- end -}}

{{/*
Where the Task and Agent policies apply: a release that watches namespaces named one by one judges the
Tasks and Agents of those namespaces only (another release may run the others, under policies of its
own). With every namespace watched, or a glob pattern among them (which a namespace selector cannot
express), they apply in every namespace. ClusterAgents are cluster-scoped: a namespace selector never
exempts them. Empty when the policies apply everywhere.
*/}}
{{- define "taskyard.admissionScope" -}}
{{- $named := true }}
{{- range .Values.watchNamespaces }}
{{- if not (regexMatch "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$" .) }}{{ $named = false }}{{ end }}
{{- end }}
{{- if and .Values.watchNamespaces $named -}}
matchResources:
  namespaceSelector:
    matchExpressions:
      - key: kubernetes.io/metadata.name
        operator: In
        values: {{ toJson .Values.watchNamespaces }}
{{- end }}
{{- end }}
