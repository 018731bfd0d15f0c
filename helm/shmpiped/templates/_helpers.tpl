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

{{/* The pipeline file's text ("" when the image's embedded demo runs).  With realtime.enabled it
     carries realtime.settings as its `realtime:` block, under the pipeline's own keys. */}}
{{- define "shmpiped.pipelineText" -}}
{{- $pipeline := .Values.pipeline }}
{{- $realtime := .Values.realtime }}
{{- $addBlock := and $realtime.enabled $realtime.settings }}
{{- if and $realtime.enabled (not $pipeline) }}
{{- fail "realtime.enabled adds realtime.settings to the pipeline, and the image's embedded demo takes none: set pipeline (e.g. --set-file pipeline=pipeline.yaml)" }}
{{- end }}
{{- if kindIs "string" $pipeline }}
{{- if and $addBlock (not (regexMatch "(?m)^realtime[ \t]*:" $pipeline)) }}
{{- if hasPrefix "{" (trim $pipeline) }}
{{- fail "realtime.enabled cannot add a block to a pipeline string in flow style ({...}): give pipeline as a mapping, or write its realtime: key yourself" }}
{{- end }}
{{- printf "%s\n# realtime.settings of the Helm release (realtime.enabled):\nrealtime:\n%s\n" (trimSuffix "\n" $pipeline) (toYaml $realtime.settings | indent 2) }}
{{- else }}
{{- $pipeline }}
{{- end }}
{{- else if $pipeline }}
{{- if $addBlock }}
{{- $merged := deepCopy $pipeline }}
{{- $_ := set $merged "realtime" (merge (deepCopy (default (dict) $merged.realtime)) (deepCopy $realtime.settings)) }}
{{- toYaml $merged }}
{{- else }}
{{- toYaml $pipeline }}
{{- end }}
{{- end }}
{{- end }}

{{/* The image reference: repository:tag (tag defaults to appVersion); with image.digest,
     repository@digest, or repository:tag@digest when image.tag is set. */}}
{{- define "shmpiped.image" -}}
{{- $image := .Values.image }}
{{- if $image.digest }}
{{- if $image.tag }}
{{- printf "%s:%s@%s" $image.repository $image.tag $image.digest }}
{{- else }}
{{- printf "%s@%s" $image.repository $image.digest }}
{{- end }}
{{- else }}
{{- printf "%s:%s" $image.repository (default .Chart.AppVersion $image.tag) }}
{{- end }}
{{- end }}

{{/* The labels of the pipeline's pods. */}}
{{- define "shmpiped.podLabels" -}}
{{ include "shmpiped.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/component: pipeline
{{- with .Values.podLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The job label Prometheus gives the daemon's targets (prometheus-operator): with a PodMonitor,
     the pod's label named podMonitor.jobLabel, else "<namespace>/<PodMonitor name>"; with a
     ServiceMonitor (or neither), the Service's label named serviceMonitor.jobLabel, else the
     Service's name.  prometheusRule.job overrides it. */}}
{{- define "shmpiped.job" -}}
{{- if .Values.prometheusRule.job }}
{{- .Values.prometheusRule.job }}
{{- else if .Values.podMonitor.enabled }}
{{- $labels := include "shmpiped.podLabels" . | fromYaml }}
{{- $value := "" }}
{{- with .Values.podMonitor.jobLabel }}{{ $value = get $labels . | toString }}{{ end }}
{{- $value | default (printf "%s/%s" .Release.Namespace (include "shmpiped.fullname" .)) }}
{{- else }}
{{- $labels := include "shmpiped.labels" . | fromYaml }}
{{- $value := "" }}
{{- with .Values.serviceMonitor.jobLabel }}{{ $value = get $labels . | toString }}{{ end }}
{{- $value | default (include "shmpiped.fullname" .) }}
{{- end }}
{{- end }}

{{/* Labels of the `helm test` pod: not the pipeline's selector labels, so that neither the
     Service, the monitors, the NetworkPolicy nor the PodDisruptionBudget select it. */}}
{{- define "shmpiped.testSelectorLabels" -}}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: test
{{- end }}
