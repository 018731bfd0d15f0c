{{/* The pod template shared by the Deployment and the DaemonSet. */}}
{{- define "shmpiped.podTemplate" -}}
{{- $pipeline := include "shmpiped.pipelineText" . }}
{{- $limits := deepCopy (default (dict) .Values.resources.limits) }}
{{- if hasKey $limits "nvidia.com/gpu" }}
{{- fail "set gpu.enabled and gpu.count instead of resources.limits[\"nvidia.com/gpu\"]" }}
{{- end }}
{{- if .Values.gpu.enabled }}
{{- $_ := set $limits "nvidia.com/gpu" (int .Values.gpu.count) }}
{{- end }}
{{- include "shmpiped.checkExtraVolumes" (dict "Values" .Values "pipeline" $pipeline) }}
{{- include "shmpiped.checkControlToken" . }}
{{- "" -}}
metadata:
  labels:
    {{- include "shmpiped.podLabels" . | nindent 4 }}
  {{- if or $pipeline .Values.podAnnotations }}
  annotations:
    {{- if $pipeline }}
    # A new pipeline rolls the pod (Recreate: the old daemon has stopped before the new one starts).
    checksum/pipeline: {{ $pipeline | trimSuffix "\n" | sha256sum }}
    {{- end }}
    {{- with .Values.podAnnotations }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- end }}
spec:
  automountServiceAccountToken: false
  enableServiceLinks: false
  {{- if .Values.shm.hostIPC }}
  # The node's IPC namespace and /dev/shm: see shm.hostIPC in values.yaml for the risk.
  hostIPC: true
  {{- end }}
  {{- with .Values.runtimeClassName }}
  runtimeClassName: {{ . }}
  {{- end }}
  {{- with .Values.priorityClassName }}
  priorityClassName: {{ . }}
  {{- end }}
  terminationGracePeriodSeconds: {{ .Values.terminationGracePeriodSeconds }}
  {{- with .Values.imagePullSecrets }}
  imagePullSecrets:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.podSecurityContext }}
  securityContext:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.initContainers }}
  initContainers:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  containers:
    - name: shmpiped
      image: {{ include "shmpiped.image" . | quote }}
      imagePullPolicy: {{ .Values.image.pullPolicy }}
      env:
        - name: SHMPIPED_HTTP_ADDRESS
          value: "0.0.0.0:9750"
        - name: SHMPIPED_LOG_FORMAT
          value: {{ .Values.daemon.logFormat | quote }}
        - name: SHMPIPED_LOG_LEVEL
          value: {{ .Values.daemon.logLevel | quote }}
        {{- if $pipeline }}
        - name: SHMPIPED_PIPELINE
          value: /etc/shmpiped/pipeline.yaml
        {{- end }}
        {{- with .Values.daemon.namespace }}
        - name: SHMPIPED_NAMESPACE
          value: {{ . | quote }}
        {{- end }}
        # `kubectl exec ... -- shmpiped ctl` finds the socket through the same variable.
        - name: SHMPIPED_CONTROL_SOCKET
          value: {{ ternary "/run/shmpiped/control.sock" "none" .Values.daemon.controlSocket | quote }}
        {{- if .Values.control.existingSecret }}
        # The control plane's tokens: the Secret control.existingSecret, mounted below.
        - name: SHMPIPED_TOKEN_FILE
          value: {{ include "shmpiped.tokenFile" . }}
        {{- end }}
        {{- if not (kindIs "invalid" .Values.daemon.restartBudget) }}
        - name: SHMPIPED_RESTART_BUDGET
          value: {{ .Values.daemon.restartBudget | toString | quote }}
        {{- end }}
        {{- if not (kindIs "invalid" .Values.daemon.restartWindow) }}
        - name: SHMPIPED_RESTART_WINDOW
          value: {{ .Values.daemon.restartWindow | toString | quote }}
        {{- end }}
        {{- if not (kindIs "invalid" .Values.daemon.targetRate) }}
        - name: SHMPIPED_TARGET_RATE
          value: {{ .Values.daemon.targetRate | toString | quote }}
        {{- end }}
        {{- with .Values.extraEnv }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
      {{- with .Values.extraEnvFrom }}
      envFrom:
        {{- toYaml . | nindent 8 }}
      {{- end }}
      ports:
        - name: metrics
          containerPort: 9750
          protocol: TCP
      startupProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: {{ .Values.probes.startup.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.startup.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.startup.failureThreshold }}
      livenessProbe:
        httpGet:
          path: /healthz
          port: metrics
        periodSeconds: {{ .Values.probes.liveness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.liveness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.liveness.failureThreshold }}
      readinessProbe:
        httpGet:
          path: /readyz
          port: metrics
        periodSeconds: {{ .Values.probes.readiness.periodSeconds }}
        timeoutSeconds: {{ .Values.probes.readiness.timeoutSeconds }}
        failureThreshold: {{ .Values.probes.readiness.failureThreshold }}
      resources:
        {{- with .Values.resources.requests }}
        requests:
          {{- toYaml . | nindent 10 }}
        {{- end }}
        {{- with $limits }}
        limits:
          {{- toYaml . | nindent 10 }}
        {{- end }}
      securityContext:
        {{- include "shmpiped.containerSecurityContext" . | nindent 8 }}
      volumeMounts:
        {{- if not .Values.shm.hostIPC }}
        - name: dev-shm
          mountPath: /dev/shm
        {{- end }}
        {{- if $pipeline }}
        - name: pipeline
          mountPath: /etc/shmpiped
          readOnly: true
        {{- end }}
        {{- if .Values.daemon.controlSocket }}
        - name: run
          mountPath: /run/shmpiped
        {{- end }}
        - name: tmp
          mountPath: /tmp
        {{- if .Values.control.existingSecret }}
        - name: control-token
          mountPath: {{ include "shmpiped.tokenDir" . }}
          readOnly: true
        {{- end }}
        {{- with .Values.extraVolumeMounts }}
        {{- toYaml . | nindent 8 }}
        {{- end }}
  volumes:
    {{- if not .Values.shm.hostIPC }}
    - name: dev-shm
      emptyDir:
        medium: Memory
        sizeLimit: {{ .Values.shm.sizeLimit }}
    {{- end }}
    {{- if $pipeline }}
    - name: pipeline
      configMap:
        name: {{ include "shmpiped.fullname" . }}-pipeline
        items:
          - key: pipeline.yaml
            path: pipeline.yaml
    {{- end }}
    {{- if .Values.daemon.controlSocket }}
    - name: run
      emptyDir:
        sizeLimit: 1Mi
    {{- end }}
    - name: tmp
      emptyDir:
        sizeLimit: 64Mi
    {{- with .Values.control.existingSecret }}
    # 0440, owner root, group fsGroup: readable by the daemon, not world-readable (which the
    # daemon refuses; a Secret's files are 0644 by default).
    - name: control-token
      secret:
        secretName: {{ . }}
        defaultMode: 288  # 0440: the octal a YAML 1.2 reader would take for 440
        items:
          - key: {{ $.Values.control.secretKey }}
            path: token
    {{- end }}
    {{- with .Values.extraVolumes }}
    {{- toYaml . | nindent 4 }}
    {{- end }}
  {{- with .Values.nodeSelector }}
  nodeSelector:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- $tolerations := .Values.tolerations }}
  {{- if and .Values.gpu.enabled .Values.gpu.tolerateTaint }}
  {{- $tolerations = append $tolerations (dict "key" "nvidia.com/gpu" "operator" "Exists" "effect" "NoSchedule") }}
  {{- end }}
  {{- with $tolerations }}
  tolerations:
    {{- toYaml . | nindent 4 }}
  {{- end }}
  {{- with .Values.affinity }}
  affinity:
    {{- toYaml . | nindent 4 }}
  {{- end }}
{{- end }}

{{/* The shmpiped container's securityContext: .Values.securityContext without the chart key
     addCapabilities, whose capabilities join capabilities.add; realtime.enabled adds SYS_NICE and
     IPC_LOCK and, with realtime.runAsRoot, runs the container as uid 0 in the pod's group. */}}
{{- define "shmpiped.containerSecurityContext" -}}
{{- $context := omit (deepCopy (default (dict) .Values.securityContext)) "addCapabilities" }}
{{- $capabilities := deepCopy (default (dict) $context.capabilities) }}
{{- $add := concat (default (list) $capabilities.add) (default (list) .Values.securityContext.addCapabilities) }}
{{- if .Values.realtime.enabled }}
{{- $add = concat $add (list "SYS_NICE" "IPC_LOCK") }}
{{- end }}
{{- $add = uniq $add }}
{{- if $add }}
{{- $_ := set $capabilities "add" $add }}
{{- else }}
{{- $_ := unset $capabilities "add" }}
{{- end }}
{{- if $capabilities }}
{{- $_ := set $context "capabilities" $capabilities }}
{{- else }}
{{- $_ := unset $context "capabilities" }}
{{- end }}
{{- if and .Values.realtime.enabled .Values.realtime.runAsRoot }}
{{- /* Kubernetes gives added capabilities to uid 0 only (values.yaml, realtime.runAsRoot). */}}
{{- $_ := set $context "runAsUser" 0 }}
{{- $_ := set $context "runAsNonRoot" false }}
{{- $pod := default (dict) .Values.podSecurityContext }}
{{- if and (not (hasKey $context "runAsGroup")) (hasKey $pod "runAsGroup") }}
{{- $_ := set $context "runAsGroup" $pod.runAsGroup }}
{{- end }}
{{- end }}
{{- toYaml $context }}
{{- end }}

{{/* Refuses extra volumes and mounts that collide with the chart's own, or mount no volume. */}}
{{- define "shmpiped.checkExtraVolumes" -}}
{{- $values := .Values }}
{{- $mounts := dict "/tmp" "tmp" }}
{{- if not $values.shm.hostIPC }}{{ $_ := set $mounts "/dev/shm" "dev-shm" }}{{ end }}
{{- if .pipeline }}{{ $_ := set $mounts "/etc/shmpiped" "pipeline" }}{{ end }}
{{- if $values.daemon.controlSocket }}{{ $_ := set $mounts "/run/shmpiped" "run" }}{{ end }}
{{- if $values.control.existingSecret }}{{ $_ := set $mounts "/run/secrets/shmpiped" "control-token" }}{{ end }}
{{- $volumes := list "dev-shm" "pipeline" "run" "tmp" "control-token" }}
{{- range $index, $volume := $values.extraVolumes }}
{{- if has $volume.name $volumes }}
{{- fail (printf "extraVolumes[%d]: the name %q is taken (the chart's volumes are dev-shm, pipeline, run, tmp and control-token; names are unique): rename it" $index $volume.name) }}
{{- end }}
{{- $volumes = append $volumes $volume.name }}
{{- end }}
{{- $extraPaths := list }}
{{- range $index, $mount := $values.extraVolumeMounts }}
{{- if not (has $mount.name $volumes) }}
{{- fail (printf "extraVolumeMounts[%d]: no volume is named %q: add it to extraVolumes" $index $mount.name) }}
{{- end }}
{{- $path := trimSuffix "/" $mount.mountPath }}
{{- range $chartPath, $chartVolume := $mounts }}
{{- if or (eq $path $chartPath) (hasPrefix (printf "%s/" $chartPath) $path) }}
{{- fail (printf "extraVolumeMounts[%d]: mountPath %s is at or under the chart's mount %s (volume %s): mount it elsewhere, e.g. /opt/shmpiped/%s" $index $mount.mountPath $chartPath $chartVolume $mount.name) }}
{{- end }}
{{- end }}
{{- if has $path $extraPaths }}
{{- fail (printf "extraVolumeMounts[%d]: mountPath %s is used twice" $index $mount.mountPath) }}
{{- end }}
{{- $extraPaths = append $extraPaths $path }}
{{- end }}
{{- end }}

{{/* Where the control plane's token file is mounted (control.existingSecret). */}}
{{- define "shmpiped.tokenDir" -}}
/run/secrets/shmpiped
{{- end }}

{{- define "shmpiped.tokenFile" -}}
{{ include "shmpiped.tokenDir" . }}/token
{{- end }}

{{/* The token file is 0440, owner root, group podSecurityContext.fsGroup: a container that runs as
     another user than root reads it through fsGroup only. */}}
{{- define "shmpiped.checkControlToken" -}}
{{- if .Values.control.existingSecret }}
{{- $context := fromYaml (include "shmpiped.containerSecurityContext" .) }}
{{- $pod := default (dict) .Values.podSecurityContext }}
{{- $user := "" }}
{{- if hasKey $context "runAsUser" }}{{ $user = toString $context.runAsUser }}
{{- else if hasKey $pod "runAsUser" }}{{ $user = toString $pod.runAsUser }}{{ end }}
{{- if and (ne $user "0") (not (hasKey $pod "fsGroup")) }}
{{- fail "control.existingSecret: the token file is mounted 0440 (owner root, group podSecurityContext.fsGroup), but podSecurityContext.fsGroup is not set and the container does not run as uid 0, so the daemon could not read it: set podSecurityContext.fsGroup (e.g. 10001)" }}
{{- end }}
{{- end }}
{{- end }}
