{{/* Chart name, or nameOverride. */}}
{{- define "shmpiped.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Fully qualified name: <release>-<name>, or the release name when it already contains the name. */}}
{{- define "shmpiped.fullname" -}}
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

{{- define "shmpiped.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "shmpiped.selectorLabels" -}}
app.kubernetes.io/name: {{ include "shmpiped.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{- define "shmpiped.labels" -}}
helm.sh/chart: {{ include "shmpiped.chart" . }}
{{ include "shmpiped.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: pipeline
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/* The pipeline file's text ("" when the image's embedded demo runs). */}}
{{- define "shmpiped.pipelineText" -}}
{{- $pipeline := .Values.pipeline }}
{{- if kindIs "string" $pipeline }}
{{- $pipeline }}
{{- else if $pipeline }}
{{- toYaml $pipeline }}
{{- end }}
{{- end }}

{{- define "shmpiped.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}
