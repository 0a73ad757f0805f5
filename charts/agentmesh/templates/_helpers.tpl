{{/* The chart's name, or nameOverride. */}}
{{- define "agentmesh.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The release's full name: fullnameOverride, else the release name when it already contains
the chart's name (so `helm install agentmesh` gives `agentmesh`), else `<release>-<name>`. */}}
{{- define "agentmesh.fullname" -}}
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

{{- define "agentmesh.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Labels of every object. */}}
{{- define "agentmesh.labels" -}}
helm.sh/chart: {{ include "agentmesh.chart" . }}
app.kubernetes.io/name: {{ include "agentmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: agentmesh
{{- end }}

{{/* The operator's pods (the seed's `server` component). */}}
{{- define "agentmesh.selectorLabels" -}}
app.kubernetes.io/name: {{ include "agentmesh.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{- define "agentmesh.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "agentmesh.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* `repository:tag` of an image value. */}}
{{- define "agentmesh.image" -}}
{{- printf "%s:%s" .repository (toString .tag) }}
{{- end }}

{{/* The ClusterRole of the operator: also the owner of what the operator makes for this
installation (the webhook configuration and its certificate Secret), so that uninstalling
garbage-collects them. */}}
{{- define "agentmesh.clusterRoleName" -}}
{{- printf "%s-operator" (include "agentmesh.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The ClusterRole the operator binds each MeshLogicAgent's probes to. */}}
{{- define "agentmesh.probeClusterRoleName" -}}
{{- printf "%s-probe" (include "agentmesh.fullname" .) | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Redis: the host, and the Secret and key holding its password. */}}
{{- define "agentmesh.redis.fullname" -}}
{{- printf "%s-redis" .Release.Name | trunc 57 | trimSuffix "-" }}
{{- end }}
{{- define "agentmesh.redis.host" -}}
{{- if .Values.redis.enabled }}
{{- printf "%s-master" (include "agentmesh.redis.fullname" .) }}
{{- else }}
{{- required "redis.host is required when storage.backend is redis and redis.enabled is false" .Values.redis.host }}
{{- end }}
{{- end }}
{{- define "agentmesh.redis.secretName" -}}
{{- default (include "agentmesh.redis.fullname" .) .Values.redis.auth.existingSecret }}
{{- end }}

{{/* PostgreSQL: the host, and the Secret and key holding its password. */}}
{{- define "agentmesh.postgresql.fullname" -}}
{{- printf "%s-postgresql" .Release.Name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- define "agentmesh.postgresql.host" -}}
{{- if .Values.postgresql.enabled }}
{{- include "agentmesh.postgresql.fullname" . }}
{{- else }}
{{- required "postgresql.host is required when storage.backend is postgres and postgresql.enabled is false" .Values.postgresql.host }}
{{- end }}
{{- end }}
{{- define "agentmesh.postgresql.secretName" -}}
{{- default (include "agentmesh.postgresql.fullname" .) .Values.postgresql.auth.existingSecret }}
{{- end }}

{{/* Checks across values that a schema cannot express. */}}
{{- define "agentmesh.validate" -}}
{{- if and (eq .Values.storage.backend "redis") (not .Values.redis.auth.password) (not .Values.redis.auth.existingSecret) }}
{{- fail "storage.backend=redis needs redis.auth.password (or redis.auth.existingSecret): Redis is never run without a password" }}
{{- end }}
{{- if and (eq .Values.storage.backend "redis") (not .Values.redis.enabled) (not .Values.redis.host) }}
{{- fail "redis.host is required when storage.backend is redis and redis.enabled is false" }}
{{- end }}
{{- if and (eq .Values.storage.backend "postgres") (not .Values.postgresql.enabled) (not .Values.postgresql.host) }}
{{- fail "postgresql.host is required when storage.backend is postgres and postgresql.enabled is false" }}
{{- end }}
{{- if and (eq .Values.storage.backend "postgres") (not .Values.postgresql.auth.password) (not .Values.postgresql.auth.existingSecret) }}
{{- fail "storage.backend=postgres needs postgresql.auth.password (or postgresql.auth.existingSecret)" }}
{{- end }}
{{- if and .Values.sidecarInjector.clientAuth.names (not .Values.sidecarInjector.clientAuth.caBundle) }}
{{- fail "sidecarInjector.clientAuth.names needs sidecarInjector.clientAuth.caBundle: names are checked on certificates that CA signs" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.minReplicas) 2) }}
{{- fail "autoscaling.minReplicas must be at least 2: the webhook must stay up while a replica restarts" }}
{{- end }}
{{- end }}
