{{/* Names, labels and the checks every template shares. */}}

{{/* The chart name, or nameOverride. */}}
{{- define "ferry.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* The full name of the release's objects: RELEASE-ferry, or RELEASE when it says ferry. */}}
{{- define "ferry.fullname" -}}
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

{{/* Labels of every object. */}}
{{- define "ferry.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "ferry.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | trunc 63 | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* Labels that select the ferry pods. */}}
{{- define "ferry.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ferry.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/* The ServiceAccount the pods run as. */}}
{{- define "ferry.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ferry.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/* The image reference. */}}
{{- define "ferry.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) }}
{{- end }}

{{/* The namespace of workflows of projects that name none. */}}
{{- define "ferry.defaultWorkflowNamespace" -}}
{{- .Values.config.argo.namespace | default .Release.Namespace }}
{{- end }}

{{/* The namespaces ferry submits workflows to, comma-separated, sorted, without repeats. */}}
{{- define "ferry.workflowNamespaces" -}}
{{- $all := list (include "ferry.defaultWorkflowNamespace" .) }}
{{- range .Values.projects }}
{{- if .namespace }}{{ $all = append $all .namespace }}{{ end }}
{{- end }}
{{- range .Values.rbac.namespaces }}{{ $all = append $all . }}{{ end }}
{{- $all | uniq | sortAlpha | join "," }}
{{- end }}

{{/* "true" when the database is PostgreSQL (by URL, or because its URL comes from a Secret). */}}
{{- define "ferry.postgres" -}}
{{- if or .Values.databaseUrlSecret.name (hasPrefix "postgres://" .Values.databaseUrl) (hasPrefix "postgresql://" .Values.databaseUrl) }}true{{ end }}
{{- end }}

{{/*
Checks of values that would give a ferry that cannot start or loses data; each fails the render
with a message that names the value.
*/}}
{{- define "ferry.validate" -}}
{{- if and (gt (int .Values.replicaCount) 1) (not (include "ferry.postgres" .)) }}
{{- fail (printf "replicaCount is %d, but several ferry replicas need PostgreSQL: set databaseUrl to postgres://USER@HOST/DB, or databaseUrlSecret.name to a Secret holding that URL (databaseUrl is %q)" (int .Values.replicaCount) .Values.databaseUrl) }}
{{- end }}
{{- if and (gt (int .Values.replicaCount) 1) .Values.persistence.enabled }}
{{- fail "replicaCount > 1 with persistence.enabled: one claim cannot be shared by several replicas' git mirrors; with PostgreSQL, data_dir is only a cache: set persistence.enabled=false" }}
{{- end }}
{{- if not (has .Values.config.executor (list "argo" "local")) }}
{{- fail (printf "config.executor is %q: expected argo or local" .Values.config.executor) }}
{{- end }}
{{- if not (or (hasPrefix "sqlite:" .Values.databaseUrl) (hasPrefix "postgres://" .Values.databaseUrl) (hasPrefix "postgresql://" .Values.databaseUrl)) }}
{{- fail (printf "databaseUrl is %q: expected sqlite:///PATH or postgres://USER@HOST/DB" .Values.databaseUrl) }}
{{- end }}
{{- if not .Values.envFromSecrets }}
{{- $provided := list }}
{{- range $name, $ref := .Values.secretEnv }}{{ if $ref }}{{ $provided = append $provided $name }}{{ end }}{{ end }}
{{- range .Values.extraEnv }}{{ $provided = append $provided .name }}{{ end }}
{{- range $i, $p := .Values.projects }}
{{- range $key := list "webhook_secret_env" "token_env" "github_app_id_env" "github_app_key_env" }}
{{- $var := index $p $key }}
{{- if and $var (not (has $var $provided)) }}
{{- fail (printf "projects[%d] (%s) names %s %s, but no value provides it: add secretEnv.%s: { secretName: SECRET, key: KEY }" $i (toString $p.name) $key $var $var) }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
{{- end }}
